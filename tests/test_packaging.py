"""Packaging: the Boutiques descriptor against the real CLI, the Dockerfile against the README.

No Docker engine is needed: the Dockerfile is parsed (instructions, the install step, the
TemplateFlow fetch, which is executed against a recording stand-in for templateflow.api).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import string
import sys
import tomllib
import types
from pathlib import Path

import pytest

from bids_ketamine import __version__
from bids_ketamine.cli.parser import build_parser, parse_args

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = REPO / "boutiques.json"
DOCKERFILE = REPO / "Dockerfile"
README = REPO / "README.md"

#: argparse defaults that depend on the machine, so the descriptor cannot state them.
MACHINE_DEPENDENT = {"nprocs"}

boutiques = pytest.importorskip("boutiques", reason="boutiques is in the [test] extra")


# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------
def _descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _cli_actions() -> list[argparse.Action]:
    return [a for a in build_parser()._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _action_by_flag() -> dict[str, argparse.Action]:
    return {flag: a for a in _cli_actions() for flag in a.option_strings}


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse._CountAction))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _pip_install_targets(command: str) -> list[list[str]]:
    """Package specs of every ``pip install`` in a shell command (options dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    targets = []
    for words in commands:
        for i, word in enumerate(words[:-1]):
            if re.fullmatch(r"(.*/)?pip3?", word) and words[i + 1] == "install":
                targets.append([w for w in words[i + 2:]  # options dropped, but not -e
                                if not w.startswith("-") or w in ("-e", "--editable")])
                break
    return targets


# -------------------------------------------------------------------------------------------
# the Boutiques descriptor
# -------------------------------------------------------------------------------------------
def test_descriptor_validates():
    from boutiques import bosh

    bosh(["validate", str(DESCRIPTOR)])  # raises DescriptorValidationError if invalid
    descriptor = _descriptor()
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["name"] == "bids-ketamine"


def test_descriptor_is_the_generators_output():
    """boutiques.json is what tools/make_boutiques.py writes from the parser (one source): a CLI
    change without regenerating it fails here, with the command that fixes it."""
    import os
    import subprocess

    generated = subprocess.run([sys.executable, str(REPO / "tools" / "make_boutiques.py")], check=True,
                               capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert json.loads(generated) == _descriptor(), (
        "boutiques.json is stale: run `python tools/make_boutiques.py > boutiques.json`")


def test_exclusive_options_disable_each_other():
    """-v and -q, which argparse refuses together, disable each other in the descriptor."""
    by_id = {item["id"]: item for item in _descriptor()["inputs"]}
    assert by_id["quiet"]["disables-inputs"] == ["verbosity"]
    assert by_id["verbosity"]["disables-inputs"] == ["quiet"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["/data", "/out", "participant", "-v", "-q"])


def test_descriptor_inputs_are_exactly_the_cli_options():
    descriptor = _descriptor()
    by_flag = _action_by_flag()
    flags = [i["command-line-flag"] for i in descriptor["inputs"] if "command-line-flag" in i]
    assert len(flags) == len(set(flags)), "a flag is described twice"
    unknown = sorted(set(flags) - set(by_flag))
    assert not unknown, f"descriptor flags the CLI does not know: {unknown}"
    described = {by_flag[f].dest for f in flags}
    missing = sorted(a.option_strings[0] for a in _cli_actions()
                     if a.option_strings and a.dest not in described)
    assert not missing, f"CLI options missing from boutiques.json: {missing}"
    # positionals: same order at the start of the command line
    positional = [a.dest for a in _cli_actions() if not a.option_strings]
    flagless = [i for i in descriptor["inputs"] if "command-line-flag" not in i]
    assert [i["id"] for i in flagless] == positional
    keys = descriptor["command-line"].split()
    assert keys[0] == "bids-ketamine"
    assert keys[1:1 + len(positional)] == [i["value-key"] for i in flagless]
    assert all(not i["optional"] for i in flagless)
    for item in descriptor["inputs"]:  # every input reaches the command line
        assert item["value-key"] in keys, item["id"]


def test_descriptor_types_choices_and_defaults_follow_the_parser():
    by_flag = _action_by_flag()
    positional = {a.dest: a for a in _cli_actions() if not a.option_strings}
    for item in _descriptor()["inputs"]:
        action = by_flag.get(item.get("command-line-flag")) or positional[item["id"]]
        where = f"input {item['id']} ({item.get('command-line-flag', 'positional')})"
        assert item.get("description"), f"{where} has no description"
        # ids name the argparse destination (store_false options: no_<dest>)
        assert item["id"] in (action.dest, f"no_{action.dest}"), where
        assert (item["type"] == "Flag") == _is_flag(action), where
        assert bool(item.get("list")) == (action.nargs in ("+", "*")), where
        if action.choices is not None:
            assert item.get("value-choices") == list(action.choices), where
        else:
            assert "value-choices" not in item, where
        default = action.default
        states_default = (not _is_flag(action) and default not in (None, [], ())
                          and action.dest not in MACHINE_DEPENDENT)
        assert ("default-value" in item) == states_default, where
        if states_default:
            expected = list(default) if isinstance(default, (list, tuple)) else default
            value = item["default-value"]
            if item["type"] == "String" and not item.get("list"):
                expected = str(expected)
            assert value == expected, where
            # and the stated default is what the parser makes of it
            if action.type is not None and not item.get("list"):
                assert action.type(str(value)) == default, where


def _label(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits)
                   for _ in range(rng.randint(1, 6)))


def _valid_values(rng: random.Random, tmp_path: Path) -> dict:
    """Values for inputs whose content the parser checks (labels, files, JSON, formats)."""
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "ortho"}}))
    labels_tsv = tmp_path / "atlas.tsv"
    labels_tsv.write_text("index\tname\n1\tROI_A\n")
    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text("sbatch_args: --time=1:00:00\n")
    bids = tmp_path / "bids dir"  # a space, to check quoting
    bids.mkdir(exist_ok=True)
    baseline = _label(rng)
    return {
        "bids_dir": str(bids),
        "participant_label": [rng.choice(["sub-", ""]) + _label(rng) for _ in range(rng.randint(1, 3))],
        "session_label": [_label(rng) for _ in range(rng.randint(1, 2))],
        "baseline_session": baseline,
        "followup_session": baseline + "x",
        "bids_filters": str(filters),
        "atlas_labels": str(labels_tsv),
        "atlas": rng.choice(["ketamine7", str(tmp_path / "my_atlas.nii.gz")]),
        "plugin_args": rng.choice([str(plugin_file),
                                   json.dumps({"sbatch_args": "--time=1:00:00 --mem=4G"})]),
        "csf_md_threshold": rng.choice(["none", f"{rng.uniform(0.5, 3):.3f}"]),
        "gm_threshold": rng.choice(["none", f"{rng.uniform(0, 1):.3f}"]),
        "remission_thresholds": ["madrs=10", f"qids_sr={rng.randint(0, 20)}"],
    }


@pytest.mark.parametrize("seed", range(6))
def test_simulated_invocations_are_accepted_by_the_cli(seed, tmp_path, capsys):
    """``bosh exec simulate`` command lines from random invocations parse, value for value."""
    from boutiques import bosh

    rng = random.Random(seed)
    random.seed(seed)  # boutiques draws its random values from the random module
    example = json.loads(bosh(["example", str(DESCRIPTOR)] + (["-c"] if seed % 3 else [])))
    invocation = dict(example)
    overrides = _valid_values(rng, tmp_path)
    invocation.update({k: v for k, v in overrides.items() if k in example or k == "bids_dir"})
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    result = bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(path)])
    capsys.readouterr()  # bosh prints the command line
    argv = shlex.split(result.shell_command)
    assert argv[0] == "bids-ketamine"

    namespace = build_parser().parse_args(argv[1:])
    config = parse_args(argv[1:])  # the public entry: Config, with the cross-option checks
    assert config.analysis_level == invocation["analysis_level"]
    assert config.bids_dir == Path(invocation["bids_dir"]).absolute()

    by_id = {item["id"]: item for item in _descriptor()["inputs"]}
    by_flag = _action_by_flag()
    for input_id, value in invocation.items():
        item = by_id[input_id]
        action = by_flag[item["command-line-flag"]] if "command-line-flag" in item else None
        dest = action.dest if action else input_id
        parsed = getattr(namespace, dest)
        if item["type"] == "Flag":
            expected = {argparse._StoreTrueAction: True, argparse._StoreFalseAction: False,
                        argparse._CountAction: 1}[type(action)]
            assert parsed == expected, input_id
        elif action is not None and action.type is not None and item["type"] != "Number":
            values = value if isinstance(value, list) else [value]
            converted = [action.type(str(v)) for v in values]
            assert parsed == (converted if isinstance(value, list) else converted[0]), input_id
        elif item["type"] == "Number":
            assert parsed == pytest.approx(value), input_id
        elif item["type"] == "File" or input_id in ("output_dir", "work_dir", "bids_database_dir"):
            assert Path(parsed) == Path(value), input_id
        else:
            assert parsed == value, input_id


def test_descriptor_outputs_and_container():
    descriptor = _descriptor()
    templates = {o["id"]: o["path-template"] for o in descriptor["output-files"]}
    assert all(t.startswith("[OUTPUT_DIR]") for t in templates.values())
    names = " ".join(templates.values())
    for contract in ("dataset_description.json", "_roistats.tsv", "_dseg.nii.gz",
                     "model-tensor_param-", "desc-brain_mask", "group/change.tsv",
                     "group/models.tsv", "group/models.json", "group/report.html"):
        assert contract in names, f"no output-file for {contract}"
    image = descriptor["container-image"]
    assert image["type"] == "docker"
    name, _, tag = image["image"].rpartition(":")
    assert re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*", name)
    assert tag == descriptor["tool-version"] == __version__


# -------------------------------------------------------------------------------------------
# the Dockerfile
# -------------------------------------------------------------------------------------------
def test_dockerfile_installs_what_the_readme_installs():
    text = README.read_text()
    block = re.match(r"\s*```(?:bash|sh)\n(.*?)```", text, re.S)
    assert block, "README.md must start with a ```bash block of the two commands"
    first_command = block.group(1).strip().splitlines()[0]
    readme_targets = _pip_install_targets(first_command)
    assert readme_targets == [["."]]

    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1] == "debian:bookworm-slim"
    docker_targets = [t for kw, args in instructions if kw == "RUN"
                      for t in _pip_install_targets(args)]
    assert docker_targets == readme_targets
    # '.' is the copied source tree: the RUN that installs it works in the COPY destination
    copies = [args.split() for kw, args in instructions if kw == "COPY"]
    assert [".", "/src/bids_ketamine"] in [c[-2:] for c in copies]
    install_run = next(args for kw, args in instructions
                       if kw == "RUN" and _pip_install_targets(args))
    assert install_run.startswith("cd /src/bids_ketamine")


def test_dockerfile_entrypoint_user_and_environment():
    instructions = _dockerfile_instructions()
    entrypoints = [json.loads(args) for kw, args in instructions if kw == "ENTRYPOINT"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoints == [["bids-ketamine"]]
    assert entrypoints[0][0] in scripts

    env = {}
    for kw, args in instructions:
        if kw == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    assert env["TEMPLATEFLOW_HOME"] == "/opt/templateflow"
    assert env["BIDS_KETAMINE_CACHE"].startswith("/tmp/")
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    # the user exists: created by a RUN before USER
    assert any(kw == "RUN" and re.search(rf"useradd\b.*\b{users[-1]}\b", args)
               for kw, args in instructions)
    labels = " ".join(args for kw, args in instructions if kw == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    version_arg = [args for kw, args in instructions if kw == "ARG" and args.startswith("VERSION=")]
    assert version_arg == [f"VERSION={__version__}"]


def test_dockerfile_fetches_the_templates_the_app_reads(tmp_path, monkeypatch):
    """Run the Dockerfile's TemplateFlow step against a recording stand-in for templateflow."""
    from bids_ketamine import resources

    fetch = next(args for kw, args in _dockerfile_instructions()
                 if kw == "RUN" and "templateflow" in args)
    python_part = fetch.split("&&")[0]
    words = shlex.split(python_part)
    code = words[words.index("-c") + 1]

    home = tmp_path / "templateflow"
    calls = []

    def fake_get(template, raise_empty=False, **query):
        calls.append((template, query))
        entities = [f"res-{query['resolution']:02d}"]
        if query.get("label"):
            entities.append(f"label-{query['label']}")
        if query.get("desc"):
            entities.append(f"desc-{query['desc']}")
        name = "_".join([f"tpl-{template}", *entities, query["suffix"]]) + query["extension"]
        path = home / f"tpl-{template}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"stand-in")
        return path

    api = types.ModuleType("templateflow.api")
    api.get = fake_get
    package = types.ModuleType("templateflow")
    package.api = api
    monkeypatch.setitem(sys.modules, "templateflow", package)
    monkeypatch.setitem(sys.modules, "templateflow.api", api)
    exec(compile(code, "Dockerfile RUN", "exec"), {})

    wanted = {(res, kind) for res in (1, 2)
              for kind in ("T1w", "mask", "label-GM", "label-WM", "label-CSF")}
    got = set()
    for template, query in calls:
        assert template == "MNI152NLin2009cAsym"
        kind = f"label-{query['label']}" if query.get("label") else query["suffix"]
        got.add((query["resolution"], kind))
    assert got == wanted
    # what was fetched is what the app looks for offline
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    found = resources._templateflow_template("MNI152NLin2009cAsym")
    assert found is not None and found.source == "templateflow"
    assert "res-01" in found.t1w.name and "label-CSF" in found.csf.name


def test_every_module_imports_first():
    """Each module of the package imports in an interpreter where no other module of the
    package was imported before it (a circular import shows only in that order: a nipype worker
    unpickling a node imports its interface's module first)."""
    import pkgutil
    import subprocess

    import bids_ketamine

    modules = [info.name for info in pkgutil.walk_packages(bids_ketamine.__path__, "bids_ketamine.")
               if ".tests" not in info.name]
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'bids_ketamine' or m.startswith('bids_ketamine.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(modules) > 50
    assert done.stdout.strip() == "", done.stdout
