"""Tiny random evaluation models for the tests (and benchmarks/bench_eval.py): a CLIP
(character-level tokenizer, projection 768 as ViT-L/14's, so AES reads it), a DINO (a ViTModel
as facebook/dino-vits16 is, or a DINOv2) and the aesthetic head, each saved to a folder and
loaded through the real loading path; built from small configs, never downloaded. And a run
folder to score, written through the real writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from sigma_core import Composition, Reference
from sigma_core.evaluation import aesthetic, runlog
from sigma_core.evaluation.benchmark import load_benchmark, write_copy
from sigma_core.evaluation.run_record import write_run_record
from sigma_core.inputs.preset import preset_to_dict

CPU = torch.device("cpu")
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip


def clip_folder(folder: Path) -> Path:
    """A random CLIP with a character-level tokenizer; projection 768, as ViT-L/14's (AES)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    chars = [chr(i) for i in range(33, 127)]
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars)])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    text = {k: v for k, v in TINY.items() if k not in ("image_size", "patch_size")}
    text |= {"vocab_size": len(vocab), "max_position_embeddings": 64,
             "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
             "pad_token_id": tok.pad_token_id}  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY, projection_dim=768)).save_pretrained(
        folder
    )
    return folder


def dino_folder(folder: Path, v2: bool = False) -> Path:
    """A random DINO: a ViTModel as facebook/dino-vits16 is (or a DINOv2)."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    model = Dinov2Model(Dinov2Config(**TINY)) if v2 else ViTModel(ViTConfig(**TINY), False)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def score_argv(run: Path, models: dict[str, Path], *extra: str) -> list[str]:
    """``evaluate score RUN``'s arguments with the tiny models, on CPU; DreamSim's weights are
    never on disk here, so it is skipped."""
    return ["evaluate", "score", str(run), "--clip-model", str(models["clip"]),
            "--dino-model", str(models["dino"]), "--aes-model", str(models["aes"]),
            "--dreamsim-model", str(run.parent / "no-dreamsim"), "--device", "cpu",
            *extra]  # fmt: skip


def score(run: Path, models: dict[str, Path], *extra: str) -> int:
    """``evaluate score RUN`` in this process with the tiny models (:func:`score_argv`)."""
    from sigma_core import cli

    return cli.main(score_argv(run, models, *extra))


def eval_models(root: Path) -> dict[str, Path]:
    """The tiny CLIP, DINO and aesthetic head in folders under ``root``, by kind."""
    clip, dino = root / "clip", root / "dino"
    clip.mkdir(), dino.mkdir()
    torch.manual_seed(2)
    aes = root / "aes.pth"
    torch.save(aesthetic.AestheticHead().state_dict(), aes)  # the published file's layout
    return {"clip": clip_folder(clip), "dino": dino_folder(dino), "aes": aes}


def drawing(color: str, shape: str, size: int = 64) -> Image.Image:
    """A shape (ellipse, box, cone) of ``color`` on white."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 6, size // 6, size - size // 6, size - size // 5)
    {"ellipse": draw.ellipse, "box": draw.rectangle, "cone": draw.polygon}[shape](
        [box[:2], box[2:], (box[0], box[3])] if shape == "cone" else box, fill=color
    )
    return image


def noise(seed: int, size: int = 128) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def generated_line(item: str, arm: str = "mask=on", file: str = "x.png", seed: int = 0):
    return {"item": item, "arm": arm, "seed": seed, "file": file, "seconds": 1.5, "prompt": "p"}


ARMS = ("mask=on", "mask=off")


def write_run(root: Path, seeds: int = 1) -> Path:
    """``root/run``, a run folder through the real writers: two items (``pair``, combine, one
    reference with a region; ``pick``, select, with a distractor), two arms, ``seeds`` seeds,
    generated.jsonl in ``evaluate generate``'s order (arm by arm, item by item, seed by seed).
    Seed 0's images: pair/mask=on the noise with the ball pasted in the region, pick/mask=on the
    ball itself, pick/mask=off the distractor (the cone); any other image is noise."""
    src, run = root / "bench", root / "run"
    src.mkdir(parents=True), run.mkdir()
    ball, box, cone = drawing("red", "ellipse"), drawing("blue", "box"), drawing("green", "cone")
    for name, image in (("ball", ball), ("box", box), ("cone", cone)):
        image.save(src / f"{name}.png")
    pair = Composition(
        "A photo of [1] on top of [2]",
        [Reference(1, "ball.png", ("<subject>",), "a red ball"),
         Reference(2, "box.png", ("<background>",), "a blue box")],
    )  # fmt: skip
    pick = Composition(
        "Put [1] on a beach",
        [Reference(1, "ball.png", ("<subject>",), "a red ball"),
         Reference(2, "cone.png", ("<subject>",), "a green cone")],
    )  # fmt: skip
    write_jsonl(src / "benchmark.jsonl", [
        {"id": "pair", "family": "combine", "preset": preset_to_dict(pair),
         "references": {"1": {"role": "wanted", "region": [0, 0, 0.5, 0.5]},
                        "2": {"role": "wanted"}}},
        {"id": "pick", "family": "select", "preset": preset_to_dict(pick),
         "references": {"1": {"role": "wanted"}, "2": {"role": "distractor"}}},
    ])  # fmt: skip
    write_copy(load_benchmark(src), run)
    scene = noise(3)
    scene.paste(ball, (0, 0))
    pictures = {("pair", "mask=on"): scene, ("pair", "mask=off"): noise(4),
                ("pick", "mask=on"): ball, ("pick", "mask=off"): cone}  # fmt: skip
    log = runlog.LogWriter(run / runlog.LOG)
    keys = [(item, arm, seed) for arm in ARMS for item in ("pair", "pick") for seed in range(seeds)]
    for n, (item, arm, seed) in enumerate(keys):
        file = runlog.image_file((item, arm, seed))
        (run / file).parent.mkdir(parents=True, exist_ok=True)
        (pictures[item, arm] if seed == 0 else noise(100 + n)).save(run / file)
        log.append(generated_line(item, arm, file, seed))
    write_run_record(run, {
        "version": 1, "benchmark": str(src),
        "arms": [{"name": arm, "vary": {"mask": arm.split("=")[1]}} for arm in ARMS],
        "seeds": list(range(seeds)), "items": ["pair", "pick"], "engine": {"checkpoint": None},
        "settings_overrides": {}})  # fmt: skip
    return run
