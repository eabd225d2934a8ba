#!/usr/bin/env bash
# Sets up everything tablesync needs on this machine, idempotently:
#   1. checks Python 3.11/3.12 and Java 17+ (clear message if missing)
#   2. resolves the KCL MultiLangDaemon jars with Maven (cached in ~/.m2), plus the AWS SDK's
#      SSO jars so that IAM Identity Center profiles work for the daemon
#   3. creates .venv and installs tablesync with the tested set of requirements.lock (hashes
#      checked), and its local emulator (tablesync-local, a separate distribution kept out of the
#      product wheel); amazon-kclpy is built from its sdist (hash checked against the lock) with the
#      jars taken from the local Maven cache
# A second run only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KCLPY_VERSION=3.1.3
VENV=${TABLESYNC_VENV:-$ROOT/.venv}
STAMP=$VENV/.tablesync-setup-$(sha1sum pyproject.toml requirements.lock tablesync_local/pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [ -f "$STAMP" ]; then
  say "already set up ($VENV)"; exit 0
fi

# 1. toolchain
PY=${PYTHON:-python3}
# The same range as pyproject.toml's requires-python (>=3.11,<3.13); PYTHON=python3.12 picks another.
command -v "$PY" >/dev/null || die "python3 not found: install Python 3.11 or 3.12"
"$PY" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' \
  || die "Python 3.11 or 3.12 is required (pyproject.toml: >=3.11,<3.13), found $("$PY" --version 2>&1); set PYTHON=python3.12"
command -v java >/dev/null || die "java not found: install a Java 17 runtime (apt-get install openjdk-17-jre-headless)"
jv=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${jv:-0}" -ge 17 ] || die "Java 17+ is required by the KCL 3.x daemon, found ${jv:-unknown}"
command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) to fetch the KCL jars"

# 2. the KCL jars: kclpy's pom lists them; give it coordinates and let Maven resolve them
work=$ROOT/.tablesync/build
mkdir -p "$work"
sdist=$work/amazon_kclpy-$KCLPY_VERSION.tar.gz
if [ ! -f "$sdist" ]; then
  say "downloading amazon-kclpy $KCLPY_VERSION sdist"
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "amazon-kclpy==$KCLPY_VERSION"
fi
want=$(sed -n "/^amazon-kclpy==$KCLPY_VERSION /,/^[a-z]/s/.*--hash=sha256:\([0-9a-f]\{64\}\).*/\1/p" requirements.lock)
echo "${want:-missing}  $sdist" | sha256sum --check --status \
  || die "$sdist does not match the hash of amazon-kclpy $KCLPY_VERSION in requirements.lock; delete it and re-run"
src=$work/amazon_kclpy-$KCLPY_VERSION
[ -d "$src" ] || tar -xzf "$sdist" -C "$work"
pom=$work/kcl-pom.xml
# + the SDK's SSO and SSO-OIDC clients at the SDK version kclpy pins (${awssdk.version}): without them
#   the daemon's default credential chain cannot use IAM Identity Center (SSO) profiles.
sso='<dependency><groupId>software.amazon.awssdk</groupId><artifactId>sso</artifactId><version>${awssdk.version}</version></dependency>'
sso="$sso"'<dependency><groupId>software.amazon.awssdk</groupId><artifactId>ssooidc</artifactId><version>${awssdk.version}</version></dependency>'
sed -e 's#<modelVersion>4.0.0</modelVersion>#<modelVersion>4.0.0</modelVersion><groupId>tablesync</groupId><artifactId>kcl-jars</artifactId><version>1</version>#' \
    -e "0,/<dependencies>/s#<dependencies>#<dependencies>$sso#" "$src/pom.xml" > "$pom"
grep -q '<artifactId>ssooidc</artifactId>' "$pom" || die "could not add the SSO jars to $pom"
say "resolving KCL jars with Maven (first run downloads ~90 jars)"
mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$src/amazon_kclpy/jars" \
  -DincludeScope=runtime >"$work/mvn.log" 2>&1 || { tail -30 "$work/mvn.log" >&2; die "Maven could not resolve the KCL jars (log: $work/mvn.log)"; }

# 3. virtualenv and packages
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null
say "installing amazon-kclpy $KCLPY_VERSION with the resolved jars"
( cd "$src" && KCL_MVN_REPO_SEARCH_URL="file://$HOME/.m2/repository/" "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps . ) \
  >"$work/pip-kclpy.log" 2>&1 || { tail -30 "$work/pip-kclpy.log" >&2; die "amazon-kclpy did not install (log: $work/pip-kclpy.log)"; }
say "installing the tested dependency set (requirements.lock, hashes checked) and tablesync"
"$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r requirements.lock >"$work/pip-lock.log" 2>&1 \
  || { tail -30 "$work/pip-lock.log" >&2; die "requirements.lock did not install (log: $work/pip-lock.log)"; }
say "installing tablesync and the local emulator (tablesync-local)"
"$VENV/bin/python" -m pip install -q -e ".[dev]" -e ./tablesync_local >"$work/pip.log" 2>&1 \
  || { tail -30 "$work/pip.log" >&2; die "pip install failed (log: $work/pip.log)"; }
n=$(ls "$("$VENV/bin/python" -c 'import amazon_kclpy, os; print(os.path.dirname(amazon_kclpy.__file__))')/jars" | wc -l)
[ "$n" -gt 50 ] || die "amazon_kclpy has only $n jars; the daemon cannot start"
rm -f "$VENV"/.tablesync-setup-*
touch "$STAMP"
say "ready: $VENV ($n KCL jars)"
