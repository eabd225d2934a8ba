#!/usr/bin/env bash
# Builds the fleet release for infra/worker.yaml's ReleaseArtifact:
#   dist/tablesync-wheelhouse-<version>.tar.gz = wheels/ (tablesync, amazon-kclpy with the KCL jars,
#   and every dependency of requirements.lock) + requirements.lock (each wheel pinned with its SHA-256)
# The upstream wheels are downloaded with their hashes checked against requirements.lock; amazon-kclpy
# is built from the sdist scripts/setup.sh checked, with the jars of the local Maven cache.
# Prints the tarball's SHA-256 (the ReleaseSha256 parameter) and the upload command.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf 'wheelhouse: %s\n' "$*" >&2; }

bash scripts/setup.sh  # the venv, the checked kclpy sdist and its jars (idempotent)
PY=${TABLESYNC_VENV:-$ROOT/.venv}/bin/python
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
kclpy=$(sed -n 's/^amazon-kclpy==\([^ ]*\) .*/\1/p' requirements.lock)
out=$ROOT/dist/wheelhouse-$version
rm -rf "$out"; mkdir -p "$out/wheels"

say "downloading the locked wheels (hashes checked)"
awk '/^amazon-kclpy==/ {skip = 1; next} /^[a-z]/ {skip = 0} !skip' requirements.lock >"$out/upstream.lock"
"$PY" -m pip download -q --require-hashes --no-deps --only-binary :all: -d "$out/wheels" -r "$out/upstream.lock"
rm "$out/upstream.lock"

say "building amazon-kclpy $kclpy (with the KCL jars) and tablesync $version"
( cd "$ROOT/.tablesync/build/amazon_kclpy-$kclpy" && KCL_MVN_REPO_SEARCH_URL="file://$HOME/.m2/repository/" \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$out/wheels" . )
"$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$out/wheels" "$ROOT"

"$PY" - "$out" <<'PY'
import hashlib
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
lines = ["# tablesync fleet wheelhouse: every wheel of wheels/, pinned with its SHA-256",
         "# (pip install --no-index --require-hashes --find-links wheels -r requirements.lock)"]
for wheel in sorted((out / "wheels").glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lines.append(f"{name.replace('_', '-').lower()}=={version} --hash=sha256:{digest}")
(out / "requirements.lock").write_text("\n".join(lines) + "\n")
PY
tarball=$ROOT/dist/tablesync-wheelhouse-$version.tar.gz
tar -czf "$tarball" -C "$out" wheels requirements.lock
digest=$(sha256sum "$tarball" | cut -d' ' -f1)
say "built $tarball ($(ls "$out/wheels" | wc -l) wheels)"
echo "ReleaseSha256=$digest"
echo "upload: aws s3 cp $tarball s3://<your-release-bucket>/tablesync/$(basename "$tarball")"
echo "then: ReleaseArtifact=s3://<your-release-bucket>/tablesync/$(basename "$tarball") ReleaseSha256=$digest"
