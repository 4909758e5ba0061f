"""The playbooks pass ansible-lint's production profile, and the settings
template renders TOML that DataLab's own loader accepts."""

import json
import subprocess
from pathlib import Path

import jinja2
import pytest

from datalab import settings as settings_mod

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / ".venv-ansible" / "bin"


def test_ansible_lint_passes():
    lint = ANSIBLE / "ansible-lint"
    if not lint.exists():
        pytest.fail("ansible-lint is installed into .venv-ansible by `make test`")
    proc = subprocess.run([lint, "--profile", "production"], cwd=REPO / "ansible", capture_output=True, text=True,
                          env={"PATH": f"{ANSIBLE}:/usr/bin:/bin", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_settings_template_renders_what_datalab_loads(tmp_path):
    template = (REPO / "ansible" / "roles" / "datalab" / "templates" / "settings.toml.j2").read_text()
    # Ansible's template settings and the two filters the template uses (the real
    # ones render it in the multi-node test)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["to_json"] = json.dumps
    env.filters["combine"] = lambda a, b, recursive=False: {
        **a, **{k: ({**a.get(k, {}), **v} if isinstance(v, dict) else v) for k, v in b.items()}}
    rendered = env.from_string(template).render(
        ansible_managed="managed", swarm_addr="10.0.0.11",
        datalab_settings={"lab": {"name": "site", "demo": False},
                          "registry": {"team_approvers": {"fraud-team": "fraud-approvers"}},
                          "volumes": {"teams": ["fraud-team", "aml-team"]},
                          "profiles": [{"name": "fraud-analytics", "description": "TF, 8 GB", "image": "tensorflow",
                                        "cpu": 2.0, "memory": "8G", "groups": ["GRP-Fraud-Analytics"],
                                        "environment": {"FRAUD_DESK": "analytics"}},
                                       {"name": "tensorflow-gpu", "groups": []}]})
    path = tmp_path / "settings.toml"
    path.write_text(rendered)
    loaded = settings_mod.load(path)
    assert loaded["lab"]["advertise_addr"] == "10.0.0.11" and loaded["build"]["source"] == "present"
    assert loaded["registry"]["team_approvers"] == {"fraud-team": "fraud-approvers"}
    assert list(loaded["volumes"]["teams"]) == ["fraud-team", "aml-team"] and loaded["lab"]["demo"] is False
    profiles = {p["name"]: p for p in loaded.table("profiles")}
    assert profiles["fraud-analytics"]["environment"] == {"FRAUD_DESK": "analytics"}
    assert profiles["tensorflow-gpu"]["groups"] == [] and profiles["python"]["memory"] == "2G"


def test_managers_get_every_image_datalab_up_needs():
    """`datalab up` on the first manager refuses to start without every platform image
    and the default notebook images: the role's list must name them all."""
    import yaml

    from datalab import images, manifest

    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "datalab" / "defaults" / "main.yml").read_text())
    needed = set(images.PLATFORM_IMAGES) | {name for name, image in manifest.load().items() if image.built_by_default}
    assert needed <= set(defaults["datalab_manager_images"]), needed - set(defaults["datalab_manager_images"])


def test_the_managers_package_carries_every_library_the_datalab_command_imports():
    """The `datalab` command on a manager runs on Debian's Python with two of
    Debian's libraries and what package-datalab bundles: any other library the
    command imports would fail it there, on the first import (as prometheus_client
    did before it was bundled)."""
    import ast
    import re
    import sys

    script = (REPO / "ansible" / "roles" / "datalab" / "files" / "package-datalab").read_text()
    bundled = set(re.search(r'--platform "\$platform" ([^>]+) >&2', script).group(1).split())
    debian = {"yaml", "cryptography"}  # python3-yaml, python3-cryptography (roles/datalab/tasks/lab.yml)
    ours = {"datalab", "datalab_client"}
    sources = [*(REPO / "datalab").glob("*.py"), *(REPO / "client" / "datalab_client").glob("*.py")]
    assert len(sources) > 20
    missing = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ours | debian | bundled:
                    missing.add(f"{top} ({path.relative_to(REPO)})")
    assert not missing, sorted(missing)
