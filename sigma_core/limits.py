"""Every bound on what a user controls, in one place.

A public tool takes input from strangers, so each quantity that sets how much work a run does or
how much memory it takes has a limit, checked before anything is allocated; the message names
the limit and the value. The README's "Limits" table lists these numbers (a test keeps it so).
"""

from __future__ import annotations

from sigma_core.geometry import MAX_SIDE, MIN_SIDE

# Text
MAX_PROMPT_CHARS = 4_000  # the prompt as written (SIGMA's prompts are a few hundred characters)
MAX_ENTITY_CHARS = 200  # one slot's entity phrase
MAX_NAME_CHARS = 200  # a composition's title

# References and the sequence
MAX_REFERENCES = 16  # slots in one composition
MAX_PLACEMENTS = 16  # image placements in one prompt, repeats included
MAX_POSITIONS = 32_768  # rope positions: Qwen2.5's max_position_embeddings (or the checkpoint's)
MAX_PLAN_TOKENS = 65_536  # tokens in one plan (14 references of 1024x1024 and the output fit)
MAX_ASPECT = MAX_SIDE // MIN_SIDE  # 16: a reference or an output may be at most 16:1

# Sampling
MIN_TIMESTEPS, MAX_TIMESTEPS = 2, 1_000  # BAGEL counts timesteps: N give N-1 Euler steps
MAX_CFG_SCALE = 20.0  # cfg_text_scale and cfg_img_scale (BAGEL's app offers up to 8 and 4)
MIN_SHIFT, MAX_SHIFT = 0.05, 20.0  # timestep_shift (SIGMA's default 3.0)
MAX_SEED = 2**63  # seeds are 0 <= seed < 2^63, what torch.Generator.manual_seed takes

# Files
MAX_IMAGE_BYTES = 50 * 2**20  # one image file, encoded (the studio's upload limit too)
MAX_IMAGE_PIXELS = 64_000_000  # one image, width * height, read from its header
MAX_JSON_DEPTH = 32  # nesting of objects and lists in a preset (a valid one needs 4)
MAX_COMPOSITION_BYTES = 200 * 2**20  # a preset file, or the composition stored in a PNG
MAX_PATH_CHARS = 1_024  # an image path written in a preset
MAX_TINY_LAYERS = 64  # decoder layers of a tiny test checkpoint

# Evaluation
MAX_BENCHMARK_BYTES = 256 * 2**20  # a benchmark's JSONL manifest (images may be embedded)
MAX_BENCHMARK_ITEMS = 10_000  # items in one benchmark (XVerseBench has 300)
MAX_ITEM_ID_CHARS = 100  # a benchmark item's id, a folder name of its images
MAX_EVAL_SEEDS = 100  # evaluate generate --seeds: images per item and arm
