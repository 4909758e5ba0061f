"""The command line: `datalab settings show|check|docs` (what an operator runs before `up`), its
one-line failures, and how much it says (-q, -v)."""

import json

from datalab import cli, schema


def test_check_validates_a_file_without_starting_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DATALAB_SETTINGS", str(tmp_path / "broken-site-file.toml"))  # not read by check
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[hub]\nport = 9000\n[registry]\nothers = "none"\n')
    bad.write_text('[registry]\nothers = "None"\n')
    assert cli.main(["settings", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: valid (2 setting(s) changed from the defaults)\n"
    assert cli.main(["settings", "check", str(bad)]) == 1
    assert capsys.readouterr().err == f'datalab: {bad}: [registry] others: must be one of "read", "none" (got "None")\n'


def test_show_says_where_each_value_came_from(tmp_path, capsys):
    site = tmp_path / "site.toml"
    site.write_text("[hub]\nport = 9000\n")
    assert cli.main(["--settings", str(site), "settings", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["hub"]["port"] == {"value": 9000, "from": "file"}
    assert shown["hub"]["public_host"] == {"value": "lab.localhost", "from": "default"}
    assert shown["resources"]["scoring-edge"]["value"] == {"memory": "256M", "reserve": "32M"}
    assert cli.main(["--settings", str(site), "settings", "show"]) == 0
    assert f"port = 9000  # from {site}" in capsys.readouterr().out.splitlines()


def test_docs_is_the_generated_reference(capsys):
    assert cli.main(["settings", "docs"]) == 0
    assert capsys.readouterr().out == schema.reference()


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import pytest

    def broken(settings, args):
        raise OSError("disk on fire")

    monkeypatch.setattr(cli, "cmd_settings", broken)
    assert cli.main(["settings", "docs"]) == 1
    assert capsys.readouterr().err == "datalab: OSError: disk on fire (datalab --debug settings ... shows where)\n"
    with pytest.raises(OSError):
        cli.main(["--debug", "settings", "docs"])


def fake_engine(tmp_path):
    """Settings whose docker client answers every command with nothing, successfully."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\nexit 0\n")
    docker.chmod(0o755)
    site = tmp_path / "site.toml"
    site.write_text(f'[lab]\nname = "quiet"\ndata_dir = "{tmp_path / "data"}"\n[build]\ndocker = "{docker}"\n')
    return site, docker


def test_quiet_shows_no_progress_and_verbose_shows_each_docker_command(tmp_path, capsys):
    site, docker = fake_engine(tmp_path)
    assert cli.main(["--settings", str(site), "down"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["▶ removing stack quiet (data kept)",
                                                          "✓ removing stack quiet (data kept) (0.0s)"]
    assert cli.main(["--settings", str(site), "-q", "down"]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["--settings", str(site), "-v", "down"]) == 0
    shown = capsys.readouterr().out
    assert f"· {docker} stack rm quiet" in shown and "▶ removing stack quiet" in shown


def test_argument_errors_exit_2_naming_the_argument(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        cli.main(["deploy", "--replicas", "many"])
    assert exit_.value.code == 2
    assert "argument --replicas: invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-q", "-v", "status"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_logs_end_when_docker_service_logs_hangs_after_sending_them(tmp_path, capsys, monkeypatch):
    """`docker service logs` sometimes never ends (docker/cli#4678): a test or an operator waited forever."""
    hanging = tmp_path / "docker"
    hanging.write_text("#!/bin/sh\necho \"hub.1@node | $*\"\nexec sleep 600\n")
    hanging.chmod(0o755)
    site = tmp_path / "site.toml"
    site.write_text(f'[build]\ndocker = "{hanging}"\n')
    monkeypatch.setattr(cli, "LOGS_TIMEOUT", 1)
    assert cli.main(["--settings", str(site), "logs", "hub", "--tail", "5"]) == 0
    assert "had not ended after 1 s (a known Swarm hang)" in capsys.readouterr().err
