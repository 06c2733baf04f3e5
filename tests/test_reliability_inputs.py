"""Issue 13, bad input: paths from outside (confinement), YAML alias bombs, NaN, limits, pickle flags, busy ports.

Each test does what the reported case did and checks the refusal names the path, setting or flag and the fix.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from conftest import tiny_config

from studio import limits
from studio.cli import build_parser
from studio.cli import main as cli
from studio.config import build_config, load_config, parse_overrides
from studio.errors import ConfigError, ConfinementError, PickleRefusedError, SubjectError
from studio.jobs import Workspace, submit_train
from studio.limits import LimitError
from studio.settings import declarations
from studio.subjects import load_subject


# ---------------------------------------------------------------- case 3: subject.json entries
def _copy_subject(sample_subject: Path, target: Path) -> Path:
    shutil.copytree(sample_subject, target)
    return target


def _set_images(subject: Path, images: list[str]) -> None:
    record = json.loads((subject / "subject.json").read_text())
    record["images"] = images
    (subject / "subject.json").write_text(json.dumps(record))


def test_subject_entries_stay_inside_the_subject_folder(sample_subject, tmp_path):
    subject = _copy_subject(sample_subject, tmp_path / "subject")
    _set_images(subject, ["../../../../etc/passwd"])
    with pytest.raises(SubjectError, match=r"Refused image entry .*\.\./\.\./\.\./\.\./etc/passwd.*outside"):
        load_subject(subject)
    _set_images(subject, [str(sample_subject / "images" / "00.png")])  # an absolute path to a photo elsewhere
    with pytest.raises(SubjectError, match="absolute path"):
        load_subject(subject)
    (subject / "images" / "link.png").symlink_to("/etc/hostname")  # a symlink out of the folder
    _set_images(subject, ["images/00.png", "images/link.png"])
    with pytest.raises(SubjectError, match=r"images/link.png.*resolves to /etc/hostname"):
        load_subject(subject)


def test_a_run_copies_only_the_listed_images_never_a_symlink(sample_subject, tmp_path):
    from studio.rundir import prepare_run_dir
    from studio.runlock import run_lock

    subject = _copy_subject(sample_subject, tmp_path / "subject")
    (subject / "hostname").symlink_to("/etc/hostname")  # not listed: must not reach the run (and the web UI)
    (subject / "images" / "extra.txt").write_text("not listed")
    run = tmp_path / "run"
    with run_lock(run, "train"):
        prepare_run_dir(tiny_config("lora"), subject, run)
    copied = sorted(p.relative_to(run / "subject").as_posix() for p in (run / "subject").rglob("*"))
    assert copied == ["images", *[f"images/{i:02d}.png" for i in range(4)], "subject.json"]
    assert not any(p.is_symlink() for p in run.rglob("*"))


def test_non_image_subject_entry_is_refused_at_copy(sample_subject, tmp_path):
    from studio.rundir import prepare_run_dir

    subject = _copy_subject(sample_subject, tmp_path / "subject")
    (subject / "images" / "00.png").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(SubjectError, match=r"00.png cannot be trained on"):
        prepare_run_dir(tiny_config("lora"), subject, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- case 2: the web API's paths
def test_web_submissions_are_confined_to_the_data_dir(sample_subject, tmp_path):
    ws = Workspace.open(tmp_path / "data")
    outside = _copy_subject(sample_subject, tmp_path / "outside-subject")
    with pytest.raises(ConfinementError, match=rf"Refused subject folder {outside}.*outside {ws.root}"):
        submit_train(ws, tiny_config("lora"), str(outside), confined=True)
    (ws.subjects_dir / "sneaky").symlink_to(outside)  # a symlink inside the data dir that leads out
    with pytest.raises(ConfinementError, match="resolves to"):
        submit_train(ws, tiny_config("lora"), "sneaky", confined=True)
    assert ws.store.list() == []
    inside = _copy_subject(sample_subject, ws.subjects_dir / "toy")
    with pytest.raises(ConfinementError, match="Refused base /etc"):
        submit_train(ws, tiny_config("lora", base="/etc"), "toy", confined=True)
    assert submit_train(ws, tiny_config("lora"), "toy", confined=True).params["subject_dir"] == str(inside)
    assert submit_train(ws, tiny_config("lora"), str(outside)).params["subject_dir"] == str(outside)  # the CLI may


# ---------------------------------------------------------------- case 4: YAML alias bomb
BOMB = "sample_prompts: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "".join(
    f"l{i}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(8)
)


def test_yaml_alias_bomb_is_refused_with_a_short_message(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB.replace("sample_prompts: &a", "x0: &a").replace("l7:", "sample_prompts:"))
    assert len(recipe.read_bytes()) < 1500
    with pytest.raises(ConfigError) as caught:
        load_config(str(recipe))
    assert "aliases" in str(caught.value) and str(recipe) in str(caught.value) and len(str(caught.value)) < 400
    assert cli(["train", "--recipe", str(recipe), "--subject", str(tmp_path), "--out", str(tmp_path / "r")]) == 2


def test_huge_or_nested_values_give_bounded_messages():
    nested: list = ["lol"] * 9
    for _ in range(6):  # the shape the bomb expands to (shared references: cheap to build)
        nested = [nested] * 9
    with pytest.raises(ConfigError) as caught:
        build_config({"sample_prompts": nested})
    assert len(str(caught.value)) < 600
    with pytest.raises(ConfigError, match="at most 64 are accepted"):
        build_config({"sample_prompts": ["a"] * 100_000})
    with pytest.raises(ConfigError, match="at most 4000"):
        build_config({"class_prompt": "x" * 10_000})


# ---------------------------------------------------------------- case 8: NaN
@pytest.mark.parametrize("text", ["nan", ".nan", "inf", "-.inf"])
def test_nan_and_infinity_are_refused_for_every_float_setting(text):
    floats = [item.name for item in declarations() if str(item.type).replace(" ", "").startswith("float")]
    assert len(floats) >= 8
    for name in floats:
        with pytest.raises(ConfigError, match=rf"'{name}'.*NaN and infinity"):
            build_config(parse_overrides([f"{name}={text}"]))
        with pytest.raises(ConfigError, match=name):
            build_config({name: float(text.replace(".", ""))})


# ---------------------------------------------------------------- case 7: limits, the same for CLI, API and UI
def test_generate_cli_refuses_oversized_requests_before_loading(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert cli(["generate", "--base", "tiny-sd", "--prompt", "a dog", "--width", "10000", "--height", "10000", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--width/--height 10000" in err and "at most 2048" in err and "Use --width/--height 2048" in err
    assert cli(["generate", "--base", "tiny-sd", "--prompt", "a dog", "--num-images", "100000", "--out", out]) == 2
    assert "--num-images 100000" in capsys.readouterr().err
    assert cli(["generate", "--base", "tiny-sd", "--prompt", "a dog", "--guidance", "nan", "--out", out]) == 2
    assert "--guidance must be a number" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_api_and_web_fronts_use_the_same_limits_with_their_own_names(tiny_data_dir):
    from studio.generate import GenerationRequest, Generator
    from studio.playground import Playground, Request

    with pytest.raises(LimitError, match=r"^num_images 100000 .*at most 64"):
        Generator().generate("tiny-sd", GenerationRequest("a dog", num_images=100_000))
    with pytest.raises(LimitError, match=r"^Steps 100000 .*Use Steps 500"):
        Playground().generate([], Request("a dog", steps=100_000), front=limits.UI)
    with pytest.raises(LimitError, match=r"^Prompt is 5000 characters"):
        Playground().generate([], Request("x" * 5000), front=limits.UI)
    from webui.app import MAX_FILE_SIZE

    assert MAX_FILE_SIZE == f"{int(limits.UPLOAD_MB.maximum)}mb"


def test_eval_limits_are_checked_at_submission(tiny_lora_run, tmp_path):
    from studio.jobs import submit_eval

    ws = Workspace.open(tmp_path / "data")
    job = ws.store.add("train", "lora", {}, run_dir=str(tiny_lora_run))
    ws.store.transition(job.id, ("queued",), "finished")
    with pytest.raises(LimitError, match=r"^Images per prompt 1000 .*at most 64"):
        submit_eval(ws, job.id, {"images_per_prompt": 1000}, front="ui")
    assert cli(["eval", str(tiny_lora_run), "--images-per-prompt", "1000"]) == 2


# ---------------------------------------------------------------- case 8: the pickle opt-in is a flag each command takes
def test_every_command_that_names_a_pickle_flag_accepts_it(tmp_path, capsys):
    parser = build_parser()
    for argv in (["train", "--allow-pickle", "--subject", "s", "--out", "o"], ["generate", "--allow-pickle", "-p", "x", "-o", "o"],
                 ["eval", "r", "--allow-pickle"], ["prepare", "--allow-pickle"]):
        assert parser.parse_args(argv).allow_pickle is True
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    assert cli(["generate", "--base", str(ckpt), "--prompt", "a dog", "--out", str(tmp_path / "o.png")]) == 2
    assert "pass --allow-pickle" in capsys.readouterr().err
    from studio.models import load_configured_base

    with pytest.raises(PickleRefusedError, match=r"turn on the setting allow_pickle \(studio train --allow-pickle"):
        load_configured_base(tiny_config("lora", base=str(ckpt)))
    assert tiny_config("lora", allow_pickle=True).allow_pickle is True


# ---------------------------------------------------------------- case 8: a busy port
def test_webui_on_a_busy_port_names_the_flag(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli(["webui", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot serve on 127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err
