"""`descore annotate`: CoTs for preference pairs from a teacher (descore_plugin/data/annotate.py).

A local teacher (the shipped demo judge, a tiny random model) and a live loopback OpenAI-compatible server that
speaks the chat-completions protocol (the request shape vLLM serves: a user turn with text and a `video_url` data
URL, or `image_url` frames), with an error row, a disagreement, a parse failure and a resume that retries only the
error."""

import base64
import csv
import hashlib
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from descore_plugin import DeScoreReward
from descore_plugin.cli import main
from descore_plugin.data.annotate import rejected_path, teacher_verdict
from descore_plugin.data.pairs import load_pairs
from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.testing.synthetic import WorldConfig, write_dataset

DEMO_JUDGE = Path(__file__).resolve().parent.parent / "recipes" / "demo_judge"
DEMO_WORLD = WorldConfig(shapes=("square",), directions=("right",), backgrounds=("dark",))
DEMO_DEFECTS = ("subject", "dynamics", "camera", "style")


def rows_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_videoalign_csv(pairs, path):
    """The pairs as a VideoAlign training CSV: no CoTs, no dimension scores, label column Overall."""
    labels = {"A": "A", "B": "B", "tie": "same"}
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path_A", "path_B", "prompt", "VQ", "MQ", "TA", "Overall"])
        for p in pairs:
            writer.writerow([p.video_a, p.video_b, p.prompt, "A", "A", "A", labels[p.label]])
    return path


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    jsonl = write_dataset(root / "data", 6, seed=11, defects=DEMO_DEFECTS, world=DEMO_WORLD, progress=False)
    pairs = load_pairs(jsonl)
    return {
        "root": root,
        "jsonl": jsonl,
        "pairs": pairs,
        "csv": write_videoalign_csv(pairs, root / "data" / "videoalign.csv"),
    }


def test_demo_judge_as_teacher_writes_cots_that_parse_and_train_rm_reads(demo_world, tmp_path, capsys):
    out = tmp_path / "annotated.jsonl"
    status = main(
        ["annotate", str(demo_world["csv"]), "--teacher", str(DEMO_JUDGE), "--output", str(out), "--batch-size", "6"]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    kept = load_pairs(out, require_scores=True)  # what recipes/train_rm.py stage 1 and 2 read
    rejected = rows_of(rejected_path(out))
    assert not [r for r in rejected if r["reason"] == "parse failure"], rejected
    assert len(kept) + len(rejected) == 6 and len(kept) >= 5  # the judge is right on its own world
    assert f"{len(kept)} of 6 pairs kept" in err
    truth = {(p.video_a, p.video_b): p for p in demo_world["pairs"]}
    for pair in kept:
        a, b = parse_answer(pair.cot_a), parse_answer(pair.cot_b)
        assert a.error is None and b.error is None
        assert pair.scores_a == a.dimensional_scores and pair.scores_b == b.dimensional_scores
        original = truth[(pair.video_a, pair.video_b)]
        assert pair.label == original.label == teacher_verdict(a.overall_score, b.overall_score)  # keep=agree
    # The CoTs are the teacher's own greedy CoTs, as DeScoreReward.score writes them.
    judge = DeScoreReward.from_pretrained(DEMO_JUDGE)
    first = kept[0]
    own = judge.score([first.video_a, first.video_b], [first.prompt] * 2)
    assert [c.strip() for c in own.cots] == [first.cot_a, first.cot_b]


@pytest.mark.parametrize("kind", ["descore", "plain"])
def test_tiny_random_teacher_cots_do_not_parse_and_are_counted(demo_world, tiny_dirs, tmp_path, capsys, kind):
    """A tiny random DeScore checkpoint, and a plain Qwen-VL checkpoint (no <Reward>, no head: the package's judge
    instruction), as local teachers."""
    if kind == "plain":
        from descore_plugin.testing.tiny import init_tiny_backbone

        teacher = tmp_path / "plain"
        init_tiny_backbone(teacher, backbone="qwen2_5_vl")
    else:
        teacher = tiny_dirs["qwen3_vl"]
    out = tmp_path / "a.jsonl"
    status = main(
        [
            "annotate",
            str(demo_world["jsonl"]),
            "--teacher",
            str(teacher),
            "--output",
            str(out),
            "--keep",
            "all",
            "--max-new-tokens",
            "6",
            "--batch-size",
            "4",
        ]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert out.read_text() == ""  # nothing parses: nothing to train on
    rejected = rows_of(rejected_path(out))
    assert [r["reason"] for r in rejected] == ["parse failure"] * 6
    assert "0 of 6 pairs kept" in err and "6 not kept: parse failure" in err
    model = DeScoreReward.from_pretrained(teacher)
    pair = demo_world["pairs"][0]
    own = model.score([pair.video_a, pair.video_b], [pair.prompt] * 2, max_new_tokens=6)
    assert [rejected[0].get("cot_a", ""), rejected[0].get("cot_b", "")] == [c.strip() for c in own.cots]
    # an existing output is refused without --resume / --overwrite, and --overwrite starts again
    assert main(["annotate", str(demo_world["jsonl"]), "--teacher", str(teacher), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ a live chat server
class ChatServer:
    """A FastAPI app on 127.0.0.1 that answers POST /v1/chat/completions like vLLM: canned CoTs per video (looked up
    by the sha256 of the decoded video_url bytes), a 500 for the videos in `fail`, and GET /v1/models."""

    def __init__(self, answers: dict, api_key: str = "sk-test"):
        from fastapi import FastAPI, HTTPException, Request

        self.answers, self.fail, self.requests = answers, set(), []
        app = FastAPI()

        @app.get("/v1/models")
        def models(request: Request):
            self._auth(request, api_key)
            return {"object": "list", "data": [{"id": "judge-vl", "object": "model", "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            self._auth(request, api_key)
            body = await request.json()
            self.requests.append(body)
            assert body["model"] == "judge-vl" and body["temperature"] == 0.0 and body["max_tokens"] > 0
            (message,) = body["messages"]
            assert message["role"] == "user"
            parts = message["content"]
            texts = [p["text"] for p in parts if p["type"] == "text"]
            assert texts and all(isinstance(t, str) and t for t in texts)
            videos = [p for p in parts if p["type"] == "video_url"]
            images = [p for p in parts if p["type"] == "image_url"]
            if images:
                from PIL import Image

                for part in images:
                    header, data = part["image_url"]["url"].split(",", 1)
                    assert header == "data:image/png;base64"
                    Image.open(io.BytesIO(base64.b64decode(data))).verify()
                key = "frames"
            else:
                (video,) = videos
                header, data = video["video_url"]["url"].split(",", 1)
                assert header == "data:video/mp4;base64"
                key = hashlib.sha256(base64.b64decode(data)).hexdigest()
            if key in self.fail:
                raise HTTPException(status_code=500, detail="CUDA out of memory")
            text = self.answers.get(key, "I cannot judge this video.")
            return {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
            }

        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started

    @staticmethod
    def _auth(request, api_key):
        from fastapi import HTTPException

        if request.headers.get("authorization") != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="bad key")

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_chat_endpoint_error_row_disagreement_parse_failure_and_resume(demo_world, tmp_path, capsys):
    pairs = demo_world["pairs"]
    answers = {digest(v): cot for p in pairs for v, cot in zip(p.videos, (p.cot_a, p.cot_b))}  # the true CoTs
    answers[digest(pairs[1].video_a)], answers[digest(pairs[1].video_b)] = pairs[1].cot_b, pairs[1].cot_a  # flipped
    answers[digest(pairs[2].video_b)] = "The video looks fine to me."  # no <answer> block
    server = ChatServer(answers)
    server.fail.add(digest(pairs[3].video_a))
    try:
        out = tmp_path / "cots.jsonl"
        command = [
            "annotate",
            str(demo_world["csv"]),
            "--teacher",
            server.url,
            "--output",
            str(out),
            "--api-key",
            "sk-test",
            "--batch-size",
            "3",
        ]
        assert main(command) == 1  # a teacher error: rerun with --resume
        err = capsys.readouterr().err
        assert "3 of 6 pairs kept" in err and "1 not kept: parse failure" in err
        assert "1 not kept: disagreement" in err and "1 not kept: error" in err and "--resume" in err
        assert len(server.requests) == 12
        rejected = {r["prompt"] + r["video_a"]: r for r in rows_of(rejected_path(out))}
        reasons = {(Path(r["video_a"]).name, r["reason"]) for r in rejected.values()}
        assert reasons == {
            (Path(pairs[1].video_a).name, "disagreement"),
            (Path(pairs[2].video_a).name, "parse failure"),
            (Path(pairs[3].video_a).name, "error"),
        }
        error_row = next(r for r in rejected.values() if r["reason"] == "error")
        assert "HTTP 500" in error_row["detail"] and "CUDA out of memory" in error_row["detail"]
        kept = load_pairs(out, require_scores=True)
        for pair in kept:
            original = next(p for p in pairs if p.video_a == pair.video_a)
            assert (pair.cot_a, pair.cot_b, pair.label) == (original.cot_a, original.cot_b, original.label)
            assert pair.scores_a == {k: int(v) if v != "N/A" else v for k, v in original.scores_a.items()}

        assert main(command) == 2  # the output exists: --resume or --overwrite
        assert "--resume" in capsys.readouterr().err
        server.fail.clear()
        assert main(command + ["--resume"]) == 0
        err = capsys.readouterr().err
        assert len(server.requests) == 14  # only the failed pair was asked again
        assert "4 of 6 pairs kept (5 from an earlier run)" in err and "not kept: error" not in err
        kept = rows_of(out)
        assert len(kept) == 4 and len({(r["video_a"], r["video_b"]) for r in kept}) == 4  # no row twice

        # Frames instead of a video part (image-only models); the model name given, not listed.
        frames_out = tmp_path / "frames.jsonl"
        assert (
            main(
                [
                    "annotate",
                    str(demo_world["jsonl"]),
                    "--teacher",
                    server.url + "/chat/completions",
                    "--output",
                    str(frames_out),
                    "--api-key",
                    "sk-test",
                    "--video-as",
                    "frames",
                    "--num-frames",
                    "4",
                    "--teacher-model",
                    "judge-vl",
                    "--keep",
                    "all",
                ]
            )
            == 0
        )
        body = server.requests[-1]
        assert [p["type"] for p in body["messages"][0]["content"]].count("image_url") == 4
        # A wrong key: every pair is an error row naming the HTTP status.
        assert (
            main(
                [
                    "annotate",
                    str(demo_world["jsonl"]),
                    "--teacher",
                    server.url,
                    "--output",
                    str(tmp_path / "k.jsonl"),
                    "--api-key",
                    "wrong",
                    "--teacher-model",
                    "judge-vl",
                ]
            )
            == 1
        )
        assert all("HTTP 401" in r["detail"] for r in rows_of(rejected_path(tmp_path / "k.jsonl")))
    finally:
        server.close()


def test_unreachable_endpoint_is_one_line(demo_world, tmp_path, capsys):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    status = main(
        [
            "annotate",
            str(demo_world["jsonl"]),
            "--teacher",
            f"http://127.0.0.1:{port}",
            "--output",
            str(tmp_path / "x.jsonl"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("descore annotate: error: --teacher") and "--teacher-model" in err[-1]


def test_make_synthetic_demo_world_as_videoalign_csv(tmp_path, capsys):
    """`descore make-synthetic --world demo --format videoalign`: labels only, in VideoAlign's columns, the demo
    judge's world; a folder the command did not write is refused, its own output replaced."""
    out = tmp_path / "va"
    assert (
        main(
            ["make-synthetic", str(out), "--num-pairs", "3", "--seed", "4", "--world", "demo", "--format", "videoalign"]
        )
        == 0
    )
    assert not (out / "pairs.jsonl").exists()
    with open(out / "pairs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["path_A", "path_B", "prompt", "Overall"] and len(rows) == 3
    pairs = load_pairs(out / "pairs.csv")
    assert all(p.cot_a is None and p.scores_a is None for p in pairs)
    assert all(p.prompt.endswith("square moving right on a dark background") for p in pairs)
    assert main(["make-synthetic", str(out), "--num-pairs", "2", "--world", "demo"]) == 0  # its own output: replaced
    assert len(load_pairs(out / "pairs.jsonl")) == 2 and not (out / "pairs.csv").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["make-synthetic", str(mine), "--num-pairs", "2"]) == 2
    assert "not written by this command" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
