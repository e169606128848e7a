"""The reward-model core on tiny real Qwen2.5-VL and Qwen3-VL models."""

import json

import pytest
import torch
from conftest import BACKBONES, PROMPTS
from helpers.run import run_python
from safetensors.torch import load_file
from transformers import LogitsProcessor, LogitsProcessorList

from descore_plugin import DeScoreConfig, DeScoreReward
from descore_plugin.data.video import load_videos
from descore_plugin.modeling.model import HEAD_NAME
from descore_plugin.testing.tiny import init_tiny


class ForceEnd(LogitsProcessor):
    """Row i emits the end-of-turn token at generation step ends[i] (None: never), so rows end at different lengths."""

    def __init__(self, ends, eos_id, prompt_len):
        self.ends, self.eos_id, self.prompt_len = ends, eos_id, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        for row, end in enumerate(self.ends):
            if end == step:
                scores[row] = -float("inf")
                scores[row, self.eos_id] = 0.0
        return scores


@pytest.fixture(scope="module", params=BACKBONES)
def model(request, tiny_dirs):
    return DeScoreReward.from_pretrained(tiny_dirs[request.param])


def test_cached_think_equals_uncached_forward_when_rows_end_at_different_lengths(model, sample_videos):
    videos = load_videos(sample_videos, num_frames=8)
    batch = model.encode_prompts(videos, PROMPTS)
    ends = [3, None, 0]  # row 0 stops after 3 tokens, row 1 runs to max_new_tokens, row 2 writes an empty CoT
    forced = LogitsProcessorList([ForceEnd(ends, model._eos_ids()[0], batch["input_ids"].shape[1])])
    cached = model.generate_and_score(batch, max_new_tokens=9, logits_processor=forced)
    assert [len(ids) for ids in cached["cot_ids"]] == [3, 9, 0]
    for row in range(3):
        single = model.encode_prompts(videos[row : row + 1], PROMPTS[row : row + 1])
        full = model(
            **model.append_cots(single, [cached["cot_ids"][row]])
        )  # video, instruction, CoT, <Reward>: no cache
        torch.testing.assert_close(cached["rewards"][row], full["rewards"][0], atol=1e-4, rtol=0)


def test_batch_equals_one_by_one(model, sample_videos):
    batched = model.score(sample_videos, PROMPTS, max_new_tokens=8)
    for row in range(3):
        single = model.score(sample_videos[row : row + 1], PROMPTS[row : row + 1], max_new_tokens=8)
        assert single.cots[0] == batched.cots[row]
        torch.testing.assert_close(single.rewards[0], batched.rewards[row], atol=1e-4, rtol=0)


def test_think_false_equals_empty_cot(model, sample_videos):
    fast = model.score(sample_videos, PROMPTS, think=False)
    empty = model.score(sample_videos, PROMPTS, cots=["", "", ""])
    assert fast.cots is None and empty.cots == ["", "", ""]
    torch.testing.assert_close(fast.rewards, empty.rewards, atol=1e-5, rtol=0)


def test_supplied_cot_changes_the_reward_and_is_parsed(model, sample_videos):
    cot = (
        'The square is red. <answer>{"dimensional_scores": {"subject": 2, "dynamics": 1, "camera": "N/A", '
        '"environment": 2, "style": 2}, "overall_score": 3.5}</answer>'
    )
    out = model.score(sample_videos[:2], PROMPTS[:2], cots=[cot, "garbage"])
    assert out.dimensional_scores[0]["dynamics"] == 1 and out.overall_scores[0] == 3.5 and out.parse_errors[0] is None
    assert out.dimensional_scores[1] is None and out.parse_errors[1] == "no <answer> block"
    assert not torch.allclose(out.rewards, model.score(sample_videos[:2], PROMPTS[:2], think=False).rewards)


def test_outputs_and_flow_grpo_signature(model, sample_videos):
    out = model.score(sample_videos, PROMPTS, max_new_tokens=6)
    assert out.rewards.dtype == torch.float32 and out.rewards.shape == (3,)
    assert len(out.cots) == 3 and len(out.parse_errors) == 3 and out.uncertainty is None
    scores, info = model.reward(sample_videos, PROMPTS, metadata=[{}] * 3, max_new_tokens=6)
    assert scores == pytest.approx(out.rewards.tolist(), abs=1e-5)
    assert info["cots"] == out.cots and len(info["dimensional_scores"]) == 3


def test_seeded_sampling_is_repeatable_and_greedy_is_default(model, sample_videos):
    a = model.score(sample_videos, PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.0, seed=3)
    b = model.score(sample_videos, PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.0, seed=3)
    assert a.cots == b.cots and torch.equal(a.rewards, b.rewards)
    greedy = [model.score(sample_videos, PROMPTS, max_new_tokens=8, seed=s).cots for s in (1, 2)]
    assert greedy[0] == greedy[1]


def test_save_load_round_trip_gives_identical_rewards(model, sample_videos, tmp_path):
    before = model.score(sample_videos, PROMPTS, max_new_tokens=6)
    model.save_pretrained(tmp_path / "copy")
    reloaded = DeScoreReward.from_pretrained(tmp_path / "copy")
    after = reloaded.score(sample_videos, PROMPTS, max_new_tokens=6)
    assert after.cots == before.cots
    assert torch.equal(after.rewards, before.rewards)
    assert sorted(load_file(tmp_path / "copy" / HEAD_NAME)) == ["head.weight", "reward_token_embedding"]


def test_lora_adapter_round_trip(tiny_dirs, sample_videos, tmp_path):
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    model.add_lora(rank=4, alpha=8)
    with torch.no_grad():  # move the adapter and the reward row away from their initial values
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                param.add_(0.05 * torch.randn_like(param))
        model.head.weight.mul_(-2)
    before = model.score(sample_videos, PROMPTS, think=False).rewards
    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    reloaded = DeScoreReward.from_pretrained(tmp_path / "lora")
    torch.testing.assert_close(reloaded.score(sample_videos, PROMPTS, think=False).rewards, before, atol=1e-5, rtol=0)


def official_release(tiny_dir, out, key="rm_head.weight"):
    """An official-layout release made from a tiny model: LoRA adapter folder + rm_head.pth + processor."""
    ours = DeScoreReward.from_pretrained(tiny_dir)
    ours.add_lora(rank=4, alpha=8)
    with torch.no_grad():
        for name, param in ours.backbone.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                param.add_(0.05 * torch.randn_like(param))
    ours.backbone.peft_config["default"].base_model_name_or_path = str(tiny_dir / "backbone")
    ours.backbone.save_pretrained(out)  # adapter_config.json + adapter weights at the top level
    ours.processor.save_pretrained(out)
    torch.save({key: ours.head.weight.detach().clone()}, out / "rm_head.pth")
    return ours


@pytest.mark.parametrize("key", ["rm_head.weight", "base_model.model.rm_head.weight"])
def test_official_release_layout_loads(tiny_dirs, sample_videos, tmp_path, key):
    """Official DeScore release: LoRA adapter folder + rm_head.pth, tokenizer with <Reward>, loaded weights_only."""
    ours = official_release(tiny_dirs["qwen2_5_vl"], tmp_path / "official", key)
    loaded = DeScoreReward.from_pretrained(
        tmp_path / "official",
        num_frames=8,
        fps=None,
        max_pixels=56 * 56,
        min_pixels=28 * 28,
        prompt_template=ours.template,
    )
    assert loaded.config.layout == "user"
    ours.config.layout = "user"
    expected = ours.score(sample_videos, PROMPTS, think=False).rewards
    torch.testing.assert_close(loaded.score(sample_videos, PROMPTS, think=False).rewards, expected, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="pass prompt_template="):
        DeScoreReward.from_pretrained(
            tmp_path / "official", num_frames=8, fps=None, max_pixels=56 * 56, min_pixels=28 * 28
        )


OFFICIAL_STYLE_TEMPLATE = (
    "You judge videos.\n- Text Prompt: [insert prompt here]\n- Video: <video>\nThink, then answer.\n"
)


@pytest.mark.parametrize("family", BACKBONES)
def test_official_release_is_scored_in_the_official_inference_layout(tiny_dirs, sample_videos, tmp_path, family):
    """One user turn [instruction text, video, text, CoT + <Reward>], no assistant header, exactly the tokens the
    official inference builds; the KV-cache path gives the value of a full forward over them."""
    official_release(tiny_dirs[family], tmp_path / "official")
    model = DeScoreReward.from_pretrained(
        tmp_path / "official",
        num_frames=8,
        fps=None,
        max_pixels=56 * 56,
        min_pixels=28 * 28,
        prompt_template=OFFICIAL_STYLE_TEMPLATE,
    )
    videos = load_videos(sample_videos, num_frames=8)
    batch = model.encode_prompts(videos, PROMPTS)
    ends = [3, None, 0]  # rows end at different lengths; row 2 writes an empty CoT
    forced = LogitsProcessorList([ForceEnd(ends, model._eos_ids()[0], batch["input_ids"].shape[1])])
    cached = model.generate_and_score(batch, max_new_tokens=7, logits_processor=forced)
    assert [len(ids) for ids in cached["cot_ids"]] == [3, 7, 0]
    for row in range(3):  # the cached continuation equals a full forward over [user turn, CoT, <Reward>]
        full = model(
            **model.append_cots(
                model.encode_prompts(videos[row : row + 1], PROMPTS[row : row + 1]), [cached["cot_ids"][row]]
            )
        )
        torch.testing.assert_close(cached["rewards"][row], full["rewards"][0], atol=1e-4, rtol=0)

    # The tokens are those the official inference builds from the decoded CoT text (chat template, no generation
    # prompt), and a full forward over the official sequence (which closes the turn after <Reward>) scores the same.
    cot = "The square is red and moves right. <answer>{}</answer>"
    for row in range(2):
        instruction = OFFICIAL_STYLE_TEMPLATE.replace("[insert prompt here]", PROMPTS[row])
        before, after = instruction.split("<video>")
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": before},
                    {"type": "video"},
                    {"type": "text", "text": after},
                    {"type": "text", "text": cot + "<Reward>"},
                ],
            }
        ]
        text = model.processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        assert "assistant" not in text
        reference = model.processor(
            text=[text],
            videos=[batch_video(model, videos[row])],
            video_metadata=[videos[row].metadata()],
            do_sample_frames=False,
            do_resize=False,
            return_tensors="pt",
        )
        ours = model.append_cots(model.encode_prompts(videos[row : row + 1], PROMPTS[row : row + 1]), [cot])
        ids = reference["input_ids"][0].tolist()
        end = ids.index(model.reward_token_id) + 1
        assert ours["input_ids"][0].tolist() == ids[:end]  # the same tokens up to <Reward>; the turn's end follows
        torch.testing.assert_close(
            model(**ours)["rewards"][0], model(**dict(reference))["rewards"][0], atol=1e-5, rtol=0
        )
        scored = model.score(videos[row : row + 1], PROMPTS[row : row + 1], cots=[cot])
        torch.testing.assert_close(scored.rewards[0], model(**ours)["rewards"][0], atol=1e-5, rtol=0)


def batch_video(model, video):
    from descore_plugin.data.video import resize_frames

    factor = model.processor.video_processor.patch_size * model.processor.video_processor.merge_size
    return resize_frames(video, factor, *model.config.pixel_budget("inference")).frames


def test_distribution_head_returns_expectation_and_uncertainty(tmp_path, sample_videos):
    model = init_tiny(tmp_path / "dist", head="distribution")
    out = model.score(sample_videos, PROMPTS, think=False)
    assert out.uncertainty.shape == (3,) and (out.uncertainty > 0).all()
    torch.testing.assert_close(out.rewards, out.bin_probs @ torch.tensor(model.config.score_bins), atol=1e-5, rtol=0)
    assert ((out.rewards >= 1) & (out.rewards <= 5)).all()
    reloaded = DeScoreReward.from_pretrained(tmp_path / "dist")
    torch.testing.assert_close(reloaded.score(sample_videos, PROMPTS, think=False).rewards, out.rewards)


# ---------------------------------------------------------------------- bad input
def test_errors_name_the_bad_input(model, sample_videos):
    with pytest.raises(ValueError, match="3 videos but 2 prompts"):
        model.score(sample_videos, PROMPTS[:2], think=False)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        model.score(sample_videos, ["a", " ", "b"], think=False)
    bad = [sample_videos[0], sample_videos[1].clone().fill_(float("nan")), sample_videos[2]]
    with pytest.raises(ValueError, match=r"videos\[1\].*NaN"):
        model.score(bad, PROMPTS, think=False)
    with pytest.raises(ValueError, match=r"3 videos but cots=\[.x.\]"):
        model.score(sample_videos, PROMPTS, cots=["x"])


def test_checkpoint_errors(tiny_dirs, tmp_path):
    import shutil

    broken = tmp_path / "nohead"
    shutil.copytree(tiny_dirs["qwen2_5_vl"], broken)
    (broken / HEAD_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="no reward_head.safetensors"):
        DeScoreReward.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match="not a DeScore checkpoint"):
        DeScoreReward.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        DeScoreReward.from_pretrained("./does/not/exist")

    no_token = tmp_path / "notoken"
    shutil.copytree(tiny_dirs["qwen2_5_vl"], no_token)
    config = json.loads((no_token / "descore_config.json").read_text())
    config["reward_token"] = "<Score>"
    (no_token / "descore_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no '<Score>' token"):
        DeScoreReward.from_pretrained(no_token)

    twice = tmp_path / "twice"
    shutil.copytree(tiny_dirs["qwen2_5_vl"], twice)
    tok = json.loads((twice / "tokenizer.json").read_text())
    tok["added_tokens"].append(
        {
            **next(t for t in tok["added_tokens"] if t["content"] == "<Reward>"),
            "id": max(t["id"] for t in tok["added_tokens"]) + 1,
            "content": "<Reward> ",
        }
    )
    (twice / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="more than once"):
        DeScoreReward.from_pretrained(twice)


def test_unsupported_backbone_family(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path / "text_only")
    from descore_plugin.modeling.model import _load_backbone

    with pytest.raises(ValueError, match="is a 'qwen2' model; DeScore supports qwen2_5_vl, qwen3_vl"):
        _load_backbone(str(tmp_path / "text_only"), None)


# ---------------------------------------------------------------------- command line
def test_cli_init_tiny_and_score_json(tmp_path):
    from descore_plugin.data.video import write_video

    clip = (torch.rand(8, 3, 56, 56) * 255).to(torch.uint8)
    write_video(tmp_path / "a.mp4", clip, fps=8)
    write_video(tmp_path / "b.mp4", clip.flip(0), fps=8)

    def run(*args):
        return run_python(["-m", "descore_plugin.cli", *args])

    made = run("init-tiny", str(tmp_path / "m"), "--backbone", "qwen3_vl", "--prompt-template", 'Judge "{prompt}".')
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "m" / "descore_config.json").read_text())["prompt_template"] == 'Judge "{prompt}".'
    scored = run(
        "score",
        str(tmp_path / "a.mp4"),
        str(tmp_path / "b.mp4"),
        "--prompt",
        "a red square",
        "--model",
        str(tmp_path / "m"),
        "--json",
        "--max-new-tokens",
        "5",
    )
    assert scored.returncode == 0, scored.stderr
    records = [json.loads(line) for line in scored.stdout.splitlines() if line.startswith("{")]
    assert [r["video"] for r in records] == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    assert all(isinstance(r["reward"], float) and "cot" in r for r in records)
    missing = run("score", str(tmp_path / "nope.mp4"), "--prompt", "x", "--model", str(tmp_path / "m"))
    assert missing.returncode == 1 and "nope.mp4: file not found" in missing.stdout  # an error row; 1 = some row failed


@pytest.mark.parametrize("family", BACKBONES)
def test_video_tokens_and_reward_do_not_depend_on_batch_mates(tiny_dirs, family):
    """Videos of different lengths and sizes: each one's grid and reward are the same alone and batched (each video
    is resized on its own budget, and the processor does not resize again)."""
    model = DeScoreReward.from_pretrained(tiny_dirs[family], fps=2.0)
    generator = torch.Generator().manual_seed(1)
    videos = [
        torch.rand(16, 3, 56, 56, generator=generator),
        torch.rand(48, 3, 64, 96, generator=generator),
        torch.rand(33, 3, 40, 40, generator=generator),
        torch.rand(130, 3, 56, 56, generator=generator),
    ]
    prompts = PROMPTS + ["a long video"]
    loaded = load_videos(videos, fps=2.0)
    assert [len(v.frames) for v in loaded] == [4, 6, 4, 16]
    batched = model.encode_prompts(loaded, prompts)
    scores = model.score(videos, prompts, think=False)
    grids = []
    for row in range(len(videos)):
        alone = model.encode_prompts(loaded[row : row + 1], prompts[row : row + 1])
        grids.append(alone["video_grid_thw"][0].tolist())
        single = model.score(videos[row : row + 1], prompts[row : row + 1], think=False)
        torch.testing.assert_close(single.rewards[0], scores.rewards[row], atol=1e-5, rtol=0)
    assert batched["video_grid_thw"].tolist() == grids == [[2, 4, 4], [3, 2, 4], [2, 2, 2], [8, 4, 4]]


# ---------------------------------------------------------------------- a plain Qwen-VL checkpoint as the start
@pytest.mark.parametrize("family", BACKBONES)
def test_plain_qwen_vl_checkpoint_becomes_a_descore_model(tmp_path, sample_videos, family):
    """A Qwen-VL folder written by transformers' save_pretrained (no <Reward>, no head) loads as a new DeScore model:
    <Reward> added, embeddings resized (its row at the mean of the others), head ~ N(0, initializer_range); the saved
    DeScore checkpoint reloads to the same rewards, referring to the backbone by its path."""
    from descore_plugin.testing.tiny import init_tiny_backbone

    plain = tmp_path / "plain"
    vlm = init_tiny_backbone(plain, family)
    old_rows = vlm.get_input_embeddings().weight.detach().clone()  # (V, H)
    torch.manual_seed(0)
    model = DeScoreReward.from_pretrained(plain, num_frames=8, max_pixels=56 * 56, min_pixels=28 * 28)
    assert (
        model.reward_token_id == len(old_rows)
        and model.tokenizer.convert_ids_to_tokens(model.reward_token_id) == "<Reward>"
    )
    rows = model.vlm.get_input_embeddings().weight.detach()
    assert rows.shape[0] == len(old_rows) + 1 and torch.equal(rows[:-1], old_rows)
    torch.testing.assert_close(rows[-1], old_rows.mean(0), atol=1e-4, rtol=0)
    assert abs(model.head.weight.std().item() - vlm.config.get_text_config().initializer_range) < 0.006
    assert model.config.backbone == str(plain.resolve()) and model.config.layout == "assistant"
    rewards = model.score(sample_videos, PROMPTS, think=False).rewards

    model.save_pretrained(tmp_path / "descore", save_backbone=False)
    reloaded = DeScoreReward.from_pretrained(tmp_path / "descore")
    assert reloaded.config.backbone == str(plain.resolve())
    torch.testing.assert_close(reloaded.score(sample_videos, PROMPTS, think=False).rewards, rewards, atol=1e-6, rtol=0)


def test_from_pretrained_names_what_it_cannot_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="describes a 'llama' model"):
        DeScoreReward.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Qwen2.5-VL / Qwen3-VL checkpoint"):
        DeScoreReward.from_pretrained(tmp_path.parent)


def test_score_and_from_pretrained_arguments_are_honoured_or_refused_by_name(tiny_dirs, sample_videos):
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    with pytest.raises(TypeError, match="DeScoreConfig.fps = '2': expected float or None"):
        DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"], fps="2")
    with pytest.raises(ValueError, match="unknown DeScoreConfig fields \\['fsp'\\]"):
        DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"], fsp=2)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"], dtype="fp8")
    assert DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"], dtype="fp32").head.weight.dtype == torch.float32

    # video_fps is the rate of in-memory frames: 16 frames at 4 fps last 4 s, so fps=2 keeps 8 of them (at the
    # default 16 fps they would last 1 s and give the minimum of 4)
    clip = sample_videos[:1].repeat(1, 2, 1, 1, 1)  # (1, 16, 3, 56, 56)
    honoured = model.score(clip, PROMPTS[:1], think=False, fps=2.0, video_fps=4)
    assert not torch.allclose(honoured.rewards, model.score(clip, PROMPTS[:1], think=False, fps=2.0).rewards)
    same_frames = model.score(clip, PROMPTS[:1], think=False, num_frames=8, video_fps=4)  # same frames, same times
    torch.testing.assert_close(honoured.rewards, same_frames.rewards, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        model.score(clip, PROMPTS[:1], think=False, fps=24, num_frames=8)
    with pytest.raises(TypeError, match="unexpected argument\\(s\\) \\['frame_rate'\\]"):
        model.score(clip, PROMPTS[:1], frame_rate=24)
    with pytest.raises(ValueError, match="only apply when a CoT is generated"):
        model.score(clip, PROMPTS[:1], think=False, temperature=0.5)
    with pytest.raises(ValueError, match="batch_size=0 must be a positive int"):
        model.score(clip, PROMPTS[:1], batch_size=0)
    with pytest.warns(
        UserWarning, match="max_new_tokens=1000000000 exceeds the .* tokens the model's 4096-token context"
    ):
        out = model.score(
            clip,
            PROMPTS[:1],
            max_new_tokens=10**9,
            logits_processor=LogitsProcessorList(
                [
                    ForceEnd(
                        [2],
                        model._eos_ids()[0],
                        model.encode_prompts(load_videos(clip, num_frames=8), PROMPTS[:1])["input_ids"].shape[1],
                    )
                ]
            ),
        )
    assert len(out.cots) == 1


def test_cli_init_from_a_plain_backbone(tmp_path, sample_videos, capsys):
    from descore_plugin.cli import main

    assert main(["init-tiny", str(tmp_path / "plain"), "--plain", "--backbone", "qwen3_vl"]) == 0
    assert not (tmp_path / "plain" / "descore_config.json").exists() and (tmp_path / "plain" / "config.json").is_file()
    assert (
        main(
            [
                "init",
                str(tmp_path / "descore"),
                "--backbone",
                str(tmp_path / "plain"),
                "--prompt-template",
                "Judge {prompt}.",
            ]
        )
        == 0
    )
    assert not (tmp_path / "descore" / "backbone").exists()  # refers to the backbone, no copy of its weights
    model = DeScoreReward.from_pretrained(tmp_path / "descore", num_frames=8, max_pixels=56 * 56, min_pixels=28 * 28)
    assert model.config.backbone == str((tmp_path / "plain").resolve()) and model.template == "Judge {prompt}."
    assert model.score(sample_videos[:1], PROMPTS[:1], think=False).rewards.shape == (1,)
    capsys.readouterr()
    assert main(["init", str(tmp_path / "x"), "--backbone", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_evaluation_scores_with_the_rows_instruction(tiny_dirs, tmp_path):
    """The official CSV's `problem` (Pair.instruction, video at its <video> marker) is what evaluation scores with."""
    from descore_plugin.data.pairs import Pair
    from descore_plugin.data.video import write_video
    from descore_plugin.evaluation.preference import evaluate_pairs

    generator = torch.Generator().manual_seed(2)
    paths = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for path in paths:
        write_video(path, (torch.rand(8, 3, 56, 56, generator=generator) * 255).to(torch.uint8), fps=8)
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    instruction = "Judge the video <video> against: a red square moving right."
    pair = Pair(str(paths[0]), str(paths[1]), "a red square moving right", "A", instruction=instruction)
    row = evaluate_pairs(model, [pair], think=False, progress=False)["rows"][0]
    with_instruction = model.score(
        [str(p) for p in paths], [pair.prompt] * 2, think=False, instructions=[instruction] * 2
    )
    assert [row["reward_a"], row["reward_b"]] == pytest.approx(with_instruction.rewards.tolist(), abs=1e-6)
    assert not torch.allclose(
        with_instruction.rewards, model.score([str(p) for p in paths], [pair.prompt] * 2, think=False).rewards
    )


def test_official_checkpoint_generates_its_cot_from_its_own_encoding(tiny_dirs, sample_videos, tmp_path):
    """As the official inference: the CoT is generated from the video at qwen-vl-utils' default budget, then a full
    pass scores [instruction, video at the scoring budget, CoT, <Reward>]."""
    official_release(tiny_dirs["qwen3_vl"], tmp_path / "official")
    kwargs = dict(
        num_frames=8, fps=None, max_pixels=56 * 56, min_pixels=28 * 28, prompt_template=OFFICIAL_STYLE_TEMPLATE
    )
    default = DeScoreReward.from_pretrained(tmp_path / "official", **kwargs)
    assert (default.config.cot_min_pixels, default.config.cot_max_pixels) == (128 * 28 * 28, 768 * 28 * 28)
    model = DeScoreReward.from_pretrained(
        tmp_path / "official", cot_min_pixels=84 * 84, cot_max_pixels=112 * 112, **kwargs
    )
    videos = load_videos(sample_videos, num_frames=8)
    out = model.score(videos, PROMPTS, max_new_tokens=4)
    cot_batch = model.encode_prompts(videos, PROMPTS, stage="cot")
    assert cot_batch["video_grid_thw"][:, 1:].tolist() == [[6, 6]] * 3  # 84 x 84 frames for the CoT
    _, generated, lengths, _ = model._generate(cot_batch, 4)
    cot_ids = [generated[i, : lengths[i]] for i in range(3)]
    assert out.cots == model.tokenizer.batch_decode(cot_ids, skip_special_tokens=True)
    scoring = model.encode_prompts(videos, PROMPTS)
    assert scoring["video_grid_thw"][:, 1:].tolist() == [[4, 4]] * 3  # 56 x 56 frames for the score
    torch.testing.assert_close(out.rewards, model(**model.append_cots(scoring, cot_ids))["rewards"], atol=1e-5, rtol=0)


def test_row_instruction_places_the_video_and_is_trimmed_for_rollouts(model, sample_videos):
    videos = load_videos(sample_videos[:1], num_frames=8)
    instruction = "\n  Judge this: <video> is it a red square?  \n"
    plain = model.encode_prompts(videos, PROMPTS[:1], [instruction])
    rollout = model.encode_prompts(videos, PROMPTS[:1], [instruction], stage="rollout")
    text = model.tokenizer.decode(plain["input_ids"][0])
    assert text.index("Judge this: ") < text.index("<|vision_start|>") < text.index(" is it a red square?")
    assert model.tokenizer.decode(rollout["input_ids"][0]) == text.replace("\n  Judge", "Judge").replace(
        "?  \n<|im_end|>", "?<|im_end|>"
    )
    with pytest.raises(ValueError, match="holds <video> 2 times"):
        model.encode_prompts(videos, PROMPTS[:1], ["<video> and <video>"])


def test_loading_and_scoring_a_stage1_model_on_a_plain_base_prints_no_warning(tmp_path, capfd, caplog):
    """A LoRA model built on a plain base (no <Reward> row in the base's embeddings) loads and scores without the
    'new embeddings ... multivariate normal' note or peft's is_gradient_checkpointing FutureWarning."""
    import logging
    import warnings

    from descore_plugin.testing.tiny import init_tiny_backbone

    init_tiny_backbone(tmp_path / "plain", backbone="qwen2_5_vl")
    DeScoreReward.from_backbone(tmp_path / "plain").add_lora(4).save_pretrained(tmp_path / "stage1")
    if hasattr(logging.Logger, "warning_once"):  # transformers prints that note once per process
        logging.Logger.warning_once.cache_clear()
    capfd.readouterr()
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        model = DeScoreReward.from_pretrained(tmp_path / "stage1")
        out = model.score([torch.rand(4, 3, 28, 28)], ["a red square"], max_new_tokens=3)
    assert out.rewards.shape == (1,)
    assert [str(w.message) for w in caught] == []
    err = capfd.readouterr().err + caplog.text
    assert "multivariate" not in err and "is_gradient_checkpointing" not in err and "arning" not in err, err
    # Without the quieting both come back: what this test guards against.
    import contextlib

    from descore_plugin.modeling import loading
    from descore_plugin.modeling import model as model_module

    logging.Logger.warning_once.cache_clear() if hasattr(logging.Logger, "warning_once") else None
    with warnings.catch_warnings(record=True) as caught, contextlib.ExitStack() as stack, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        for module in (loading, model_module):
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(module, "quiet_peft", contextlib.nullcontext)
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(
                module, "quiet_embedding_resize", contextlib.nullcontext
            )
        DeScoreReward.from_pretrained(tmp_path / "stage1")
    assert any("is_gradient_checkpointing" in str(w.message) for w in caught)
    assert "multivariate normal" in capfd.readouterr().err + caplog.text


def test_cot_limit_defaults_to_twice_the_trained_cot_length(tiny_dirs, sample_videos, tmp_path):
    """Scoring's default CoT limit: 2 x DeScoreConfig.trained_cot_tokens (kept through save/load), capped by
    max_new_tokens; max_new_tokens (official 4,096) when the trained length is unknown; max_new_tokens= wins."""
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    assert model.config.trained_cot_tokens is None  # unknown: the limit is max_new_tokens (the tiny models: 256)
    assert model.config.cot_token_limit() == model.config.max_new_tokens == 256
    model.config.trained_cot_tokens = 5
    model.save_pretrained(tmp_path / "m")
    model = DeScoreReward.from_pretrained(tmp_path / "m")
    assert model.config.trained_cot_tokens == 5 and model.config.cot_token_limit() == 10
    asked = []
    generate = model._generate
    model._generate = lambda batch, max_new_tokens, **kw: (
        asked.append(max_new_tokens) or generate(batch, max_new_tokens, **kw)
    )
    model.score(sample_videos[:1], ["a red square"])
    model.score(sample_videos[:1], ["a red square"], max_new_tokens=3)
    assert asked == [10, 3]
    assert DeScoreConfig(trained_cot_tokens=3000).cot_token_limit() == 4096 == DeScoreConfig().cot_token_limit()
    with pytest.raises(ValueError, match="trained_cot_tokens"):
        DeScoreConfig(trained_cot_tokens=0)
