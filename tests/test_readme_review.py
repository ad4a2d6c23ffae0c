"""Review of README.md against what the commands do (one file of findings that are the code's
fault). Quick, CPU-only, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_checks import assert_no_traceback, invoke

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """An environment where boto finds no credentials and asks no metadata service."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_finalize_of_an_unreachable_bucket_is_one_line_and_exit_2(no_aws_credentials):
    # README, Commands: `synthgen finalize DIR|URL`; "Every mistake you can make ... prints one
    # message ... and exits with status 2", and "a place you cannot write to is one such line
    # too". `synthgen generate --out s3://...` without credentials says so in one line (exit 2);
    # `synthgen finalize s3://...` printed botocore's NoCredentialsError traceback (exit 1).
    pytest.importorskip("s3fs")
    result = invoke("finalize", "s3://synthgen-review-no-such-bucket/datasets/in100")
    assert_no_traceback(result, allowed=(2,))
    assert "s3://synthgen-review-no-such-bucket/datasets/in100" in result.output


def test_finalize_names_its_own_argument_not_out():
    # `synthgen finalize memory://x` (an unsupported scheme) answered
    # "Invalid value for 'DATASET_DIR': --out memory://x: ...": finalize has no --out option.
    result = invoke("finalize", "memory://x")
    assert_no_traceback(result, allowed=(2,))
    assert "--out" not in result.output


def test_an_output_file_under_something_that_is_not_a_folder_says_so(tmp_path):
    # `synthgen inspect --contact-sheet /dev/null/x.png` said "the folder /dev/null does not
    # exist": it exists, and is not a folder.
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("mine")
    result = invoke("plan", QUICKSTART, "--jsonl", not_a_folder / "plan.jsonl")
    assert_no_traceback(result, allowed=(2,))
    assert "is not a folder" in result.output and "does not exist" not in result.output


def test_a_rank_outside_the_world_size_given_as_options_is_not_told_about_slurm(tmp_path):
    # `--rank 3 --world-size 2` answered "for a Slurm array, number its tasks 0 to N-1".
    result = invoke("generate", QUICKSTART, "--out", tmp_path / "out",
                    "--rank", "3", "--world-size", "2")
    assert_no_traceback(result, allowed=(2,))
    assert "pass --rank 0 to 1" in result.output and "Slurm" not in result.output
