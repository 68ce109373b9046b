"""A student trained with value slots is served with them: the router encodes the request the same way
and puts the values back in what the student wrote (stillflow.slots, router.runtime)."""

from __future__ import annotations

from pathlib import Path

from router.runtime import load_version
from stillflow.slots import FORMAT_FILE
from tests.router_student import AFTER_CALL, TOOLS, registry_with, train_memorised_student


def test_a_slotted_student_copies_the_value_of_this_request(tmp_path: Path) -> None:
    source = train_memorised_student(tmp_path / "student", slots=True, steps=200)
    reg = registry_with(tmp_path / "reg", source, 1)
    assert FORMAT_FILE in reg.manifest("v0001")["files"]  # hashed with the weights
    student = load_version(reg, "v0001")
    assert student.codec is not None and student.codec.n == 4
    learnt = student.generate(AFTER_CALL, TOOLS, 16)
    assert learnt.text.startswith("The code is 42.")
    # a value it never saw in training: the slot carries it from the tool result to the answer
    other = [*AFTER_CALL[:-1], {**AFTER_CALL[-1], "content": "alpha=77"}]
    turn = student.generate(other, TOOLS, 16)
    assert turn.text.startswith("The code is 77."), turn.text
    assert "<v" not in turn.text


def test_a_plain_student_reads_plain_text(tmp_path: Path) -> None:
    source = train_memorised_student(tmp_path / "student", steps=150)
    assert not (source / FORMAT_FILE).exists()
    student = load_version(registry_with(tmp_path / "reg", source, 1), "v0001")
    assert student.codec is None
    assert student.generate(AFTER_CALL, TOOLS, 16).text.startswith("The code is 42.")
