"""Write the chosen thresholds back into a Serve config (``squad.yaml``) with ruamel.yaml's round
trip, so comments, key order and layout stay."""
from __future__ import annotations

import io
from pathlib import Path

from squad.errors import SquadError


def write_back(path: str | Path, thresholds: dict[str, float], max_steps: int, deployment: str = "SquadIngress") -> str:
    """Set ``thresholds`` and ``max_steps`` in that deployment's ``user_config``; returns the new text."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    path = Path(path)
    text = path.read_text()
    try:
        _, indent, offset = load_yaml_guess_indent(text)  # keep the file's own indentation
        yaml = YAML()  # round-trip mode
        yaml.preserve_quotes = True
        yaml.width = 4096  # never re-wrap the user's long lines
        yaml.indent(mapping=offset or 2, sequence=indent, offset=offset)
        yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
        doc = yaml.load(text)
    except YAMLError as e:
        raise SquadError(f"{path}: invalid YAML: {e}") from None
    deps = [d for app in (doc or {}).get("applications") or [] for d in app.get("deployments") or []]
    dep = next((d for d in deps if d.get("name") == deployment), None)
    if dep is None:
        raise SquadError(f"{path}: no deployment named {deployment}")
    if dep.get("user_config") is None:
        dep["user_config"] = CommentedMap()
    uc = dep["user_config"]
    th = CommentedMap((c, round(float(v), 4)) for c, v in thresholds.items())
    th.fa.set_flow_style()  # one line, as squad.yaml writes it
    uc["thresholds"] = th
    uc["max_steps"] = int(max_steps)
    out = io.StringIO()
    yaml.dump(doc, out)
    path.write_text(out.getvalue())
    return out.getvalue()
