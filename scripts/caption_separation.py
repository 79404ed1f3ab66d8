"""How far apart does a text encoder put captions that differ in one word: the shape, or the colour?

    python scripts/caption_separation.py configs/tiny-4x4x4.toml

A DiT reads the caption through the text encoder's states. If two captions that name different
shapes gave nearly the same states, no DiT could draw the shapes apart; the colour, which the tiny
DiT does draw right, is the reference. For every shape and colour of the shapes vocabulary the
script encodes "a {colour} {shape} {motion phrase} on a {background} background" over a few motion
phrases and backgrounds (the config's [data] colours and shapes), then compares the captions that
differ in the colour alone with those that differ in the shape alone, two ways: the cosine of
their mean states (what `model.pooled_text` feeds the DiT) and the distance between their token
states, position by position (what cross-attention reads; pairs that tokenise to different
lengths are left out of this one and counted).
"""

import argparse
import itertools
import json

import torch

from mvdit.build import load_text_encoder
from mvdit.config import load_train_config
from mvdit.data.shapes import COLOURS, SHAPES
from mvdit.models.dit import masked_mean

PHRASES = ("moves slowly down", "stays still", "rotates quickly", "moves quickly to the left")
BACKGROUNDS = ("black", "gray")


@torch.no_grad()
def separation(config: str) -> dict:
    cfg = load_train_config(config)
    enc = load_text_encoder(cfg.text).eval()
    colours, shapes = list(cfg.data.colours or COLOURS), list(cfg.data.shapes or SHAPES)
    pairs: dict[str, list[tuple[float, float | None]]] = {"colour only": [], "shape only": []}
    rows = {}
    for phrase, bg in itertools.product(PHRASES, BACKGROUNDS):
        caps = [f"a {c} {s} {phrase} on a {bg} background" for s in shapes for c in colours]
        states, mask = enc.encode(caps)
        pooled = torch.nn.functional.normalize(masked_mean(states, mask), dim=-1)
        at = {(s, c): i for i, (s, c) in enumerate(itertools.product(shapes, colours))}

        def compare(a: int, b: int, states=states, mask=mask, pooled=pooled):
            same_length = bool((mask[a] == mask[b]).all())
            dist = (states[a] - states[b])[mask[a]].norm().item() if same_length else None
            return float(pooled[a] @ pooled[b]), dist

        for s in shapes:
            for c1, c2 in itertools.combinations(colours, 2):
                pairs["colour only"].append(compare(at[s, c1], at[s, c2]))
        for c in colours:
            for s1, s2 in itertools.combinations(shapes, 2):
                pairs["shape only"].append(compare(at[s1, c], at[s2, c]))
    for name, vals in pairs.items():
        cos = [c for c, _ in vals]
        dist = [d for _, d in vals if d is not None]
        rows[name] = {
            "pairs": len(vals),
            "mean_state_cosine": sum(cos) / len(cos),
            "same_length_pairs": len(dist),
            "token_state_distance": sum(dist) / len(dist) if dist else None,
        }
    return {"config": config, "text": enc.__class__.__name__, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="a training config whose [text] names the encoder")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    result = separation(args.config)
    print(
        "| captions differ in | pairs | cosine of mean states | same-length pairs "
        "| distance of token states |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in result["rows"].items():
        d = r["token_state_distance"]
        print(
            f"| {name} | {r['pairs']} | {r['mean_state_cosine']:.3f} | "
            f"{r['same_length_pairs']} | {'-' if d is None else f'{d:.1f}'} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
