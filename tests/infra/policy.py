"""Render the CloudFormation templates of ``infra/`` offline and expose the worker policy.

Public interface (used by the end-to-end IAM test):

- ``render(template, parameters)``: the template with parameters applied, conditions
  evaluated, resources whose condition is false removed and intrinsic functions resolved.
  Resource references become readable placeholders (``<LogicalId>``, ``<LogicalId.Attr>``).
- ``worker_statements(parameters)``: the statements of the worker role's policy.
- ``worker_actions(parameters)``: the sorted, de-duplicated actions of those statements.
- ``moto_enforcement_policy(parameters)``: one policy document allowing exactly those actions
  on ``"*"`` without conditions: moto's IAM enforcement checks actions only (and treats
  DynamoDB/Kinesis resources as ``*``), so this proves the action list suffices, not the ARNs.

Only the intrinsic functions the templates use are supported; anything else raises
``UnsupportedIntrinsic`` rather than being passed through silently.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"

DEFAULT_WORKER_PARAMETERS: dict[str, str] = {
    "AppName": "tablesync-orders",
    "StreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders-changes",
    "ReleaseArtifact": "s3://example-releases/tablesync/tablesync-wheelhouse-0.1.0.tar.gz",
    "ReleaseSha256": "0123456789abcdef" * 4,
    "VpcId": "vpc-12345678",
    "SubnetIds": "subnet-1111aaaa,subnet-2222bbbb",
    "ImageId": "ami-12345678",
    "TargetTableArns": "arn:aws:dynamodb:eu-west-1:123456789012:table/orders-eu",
    "LedgerTableArns": "arn:aws:dynamodb:eu-west-1:123456789012:table/tablesync-ledger",
}


class UnsupportedIntrinsic(ValueError):
    """The template uses an intrinsic function this renderer does not implement."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unsupported intrinsic function {name}")
        self.name = name


_NO_VALUE = object()
_LIST_TYPES = ("CommaDelimitedList", "List<")


def load(name: str) -> dict[str, Any]:
    """Load ``infra/<name>`` (short-form tags allowed) as plain Python data."""
    node = cfn_yaml.load(str(INFRA_DIR / name))
    return json.loads(json.dumps(node))


def _parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    declared = template.get("Parameters", {})
    unknown = set(given) - set(declared)
    if unknown:
        raise KeyError(f"parameters not declared by the template: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            raw = given[name]
        elif "Default" in spec:
            raw = str(spec["Default"])
        else:
            raise KeyError(f"parameter {name} has no default and was not given")
        values[name] = raw.split(",") if spec["Type"].startswith(_LIST_TYPES) else raw
    return values


class _Renderer:
    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str], pseudo: Mapping[str, str]):
        self.template = template
        self.refs: dict[str, Any] = {**pseudo, **_parameter_values(template, parameters)}
        self.conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self.conditions[name]

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.refs:
            return self.refs[name]
        if name in self.template.get("Resources", {}):
            return f"<{name}>"
        raise KeyError(f"Ref to unknown name {name}")

    def sub(self, text: str, local: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            key = match.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in local:
                return str(local[key])
            if "." in key and key.split(".", 1)[0] in self.template.get("Resources", {}):
                return f"<{key}>"
            return str(self.ref(key))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, node: Any) -> Any:  # noqa: C901 - one branch per intrinsic
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return left == right
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Fn::FindInMap":
                top, second, third = (self.resolve(a) for a in arg)
                return copy.deepcopy(self.template["Mappings"][top][second][third])
            if key == "Fn::Join":
                sep, values = arg[0], self.resolve(arg[1])
                return sep.join(str(v) for v in values)
            if key == "Fn::Split":
                return str(self.resolve(arg[1])).split(arg[0])
            if key == "Fn::Select":
                return self.resolve(arg[1])[int(self.resolve(arg[0]))]
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                return self.sub(arg[0], {k: self.resolve(v) for k, v in arg[1].items()})
            if key == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return f"<{logical}.{attribute}>"
            if key == "Fn::Base64":
                return base64.b64encode(str(self.resolve(arg)).encode()).decode()
            if key.startswith("Fn::"):
                raise UnsupportedIntrinsic(key)
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}


def _expand_for_each(resources: Mapping[str, Any], renderer: _Renderer) -> dict[str, Any]:
    """Expand ``Fn::ForEach`` (AWS::LanguageExtensions) the way CloudFormation does."""
    expanded: dict[str, Any] = {}
    for key, value in resources.items():
        if not key.startswith("Fn::ForEach::"):
            expanded[key] = value
            continue
        identifier, collection, body = value
        for item in renderer.resolve(collection):
            alnum = re.sub(r"[^A-Za-z0-9]", "", item)
            text = json.dumps(body)
            text = text.replace("&{" + identifier + "}", alnum).replace("${" + identifier + "}", item)
            fragment = json.loads(text)
            fragment = _replace_ref(fragment, identifier, item)
            expanded.update(fragment)
    return expanded


def _replace_ref(node: Any, identifier: str, value: str) -> Any:
    if isinstance(node, list):
        return [_replace_ref(v, identifier, value) for v in node]
    if isinstance(node, dict):
        if node == {"Ref": identifier}:
            return value
        return {k: _replace_ref(v, identifier, value) for k, v in node.items()}
    return node


def render(
    template: str | Mapping[str, Any],
    parameters: Mapping[str, str] | None = None,
    *,
    account_id: str = "123456789012",
    region: str = "us-east-1",
    partition: str = "aws",
    stack_name: str = "tablesync",
) -> dict[str, Any]:
    """Return ``{"Resources": ..., "Outputs": ...}`` as CloudFormation would evaluate them."""
    source = load(template) if isinstance(template, str) else template
    pseudo = {
        "AWS::AccountId": account_id,
        "AWS::Region": region,
        "AWS::Partition": partition,
        "AWS::StackName": stack_name,
        "AWS::URLSuffix": "amazonaws.com",
    }
    renderer = _Renderer(source, parameters or {}, pseudo)
    resources: dict[str, Any] = {}
    for logical, resource in _expand_for_each(source.get("Resources", {}), renderer).items():
        if "Condition" in resource and not renderer.condition(resource["Condition"]):
            continue
        resources[logical] = renderer.resolve(resource)
    outputs: dict[str, Any] = {}
    for name, output in source.get("Outputs", {}).items():
        if "Condition" in output and not renderer.condition(output["Condition"]):
            continue
        outputs[name] = renderer.resolve(output["Value"])
    return {"Resources": resources, "Outputs": outputs}


def worker_statements(parameters: Mapping[str, str] | None = None, **pseudo: str) -> list[dict[str, Any]]:
    """The worker role's policy statements (``DEFAULT_WORKER_PARAMETERS`` overridden by ``parameters``)."""
    merged = {**DEFAULT_WORKER_PARAMETERS, **(parameters or {})}
    rendered = render("worker.yaml", merged, **pseudo)
    policies = [
        res
        for res in rendered["Resources"].values()
        if res["Type"] == "AWS::IAM::Policy" and "<WorkerRole>" in res["Properties"]["Roles"]
    ]
    statements: list[dict[str, Any]] = []
    for policy in policies:
        statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def worker_actions(parameters: Mapping[str, str] | None = None) -> list[str]:
    """Sorted unique actions the worker role is allowed (for the given parameters)."""
    return sorted({a for s in worker_statements(parameters) for a in _as_list(s["Action"])})


def moto_enforcement_policy(parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The worker's actions on ``*``, without conditions, for moto's action-only IAM enforcement."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": worker_actions(parameters), "Resource": "*"}],
    }
