"""Evaluation for the ConceptGAN acceptance (issue 10; benchmarks/conceptgan_acceptance.sh). Project venv.

X = conformational state (rlnClassNumber 1: open -> 0, 2: closed -> 1), Y = defocus (the low- or high-defocus
simulation: 0, 1).

  split --low SIM --high SIM -o DIR         d00/d01/d10/d11.star: the sub-domains of two `cryoscope simulate` runs
  judges --low SIM --high SIM -o DIR        two classifiers (X: state, Y: defocus) on real images; 10 % validation
  joint --judges DIR --generated STAR       rates of generated images classified as Σ11 on X, on Y and on both
  augment --split DIR --generated STAR --test-open STAR
                                            state classifiers trained on Σ00+Σ01 (open) vs Σ10 (closed), without and
                                            with the generated Σ11 as closed; accuracy on real held-out Σ11 (and on
                                            real Σ01, so that "always closed" cannot win)
  summary DIR                               the JSONs of a run as a Markdown table

Classifiers are the DiscoGAN discriminator of `cryoscope.conceptgan.networks` without normalisation layers, trained
with balanced batches (BCE, Adam); images are standardised with the training images' mean and std.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from cryoscope.conceptgan.data import read_images
from cryoscope.conceptgan.networks import Discriminator
from cryoscope.device import resolve_device
from cryoscope.io.checkpoint import load_checkpoint, save_checkpoint
from cryoscope.io.star import read_star, write_star


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data))


def split(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for y, sim in ((0, a.low), (1, a.high)):
        meta = read_star(Path(sim) / "particles.star")
        for x in (0, 1):
            sub = meta.subset(meta.class_number == x + 1)
            write_star(out / f"d{x}{y}.star", sub)
            counts[f"n_{x}{y}"] = sub.n
    _write_json(out / "split.json", counts)


def _labelled(low: str, high: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of both simulations and their labels X (state) and Y (defocus)."""
    images, xs, ys = [], [], []
    for y, sim in ((0, low), (1, high)):
        star = Path(sim) / "particles.star"
        images.append(read_images(star)[0])
        xs.append(read_star(star).class_number - 1)
        ys.append(torch.full((len(images[-1]),), y))
    return torch.cat(images), torch.cat(xs), torch.cat(ys)


class Classifier:
    """A binary image classifier: standardisation, then a DiscoGAN discriminator's logit."""

    def __init__(self, box: int, width: int, offset: float = 0.0, scale: float = 1.0, device: str = "cpu"):
        self.net = Discriminator(box, width, norm="none").to(device)
        self.box, self.width, self.offset, self.scale, self.device = box, width, offset, scale, device

    def logits(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.net(((images[i:i + batch] - self.offset) / self.scale).to(self.device)).cpu()
                              for i in range(0, len(images), batch)])

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float(((self.logits(images) > 0).long() == labels).float().mean())

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "box": self.box, "width": self.width, "offset": self.offset, "scale": self.scale}

    @classmethod
    def from_state(cls, s: dict, device: str) -> Classifier:
        c = cls(s["box"], s["width"], s["offset"], s["scale"], device)
        c.net.load_state_dict(s["net"])
        return c


def train_classifier(images: torch.Tensor, labels: torch.Tensor, a: argparse.Namespace, seed: int) -> Classifier:
    """Balanced batches (half of each label) of a.batch images, a.steps Adam steps at a.lr."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    flat = images.flatten().double()
    c = Classifier(images.shape[-1], a.width, float(flat.mean()), float(flat.std()), a.device)
    opt = torch.optim.Adam(c.net.parameters(), lr=a.lr)
    groups = [torch.nonzero(labels == k)[:, 0] for k in (0, 1)]
    target = torch.cat([torch.zeros(a.batch // 2), torch.ones(a.batch - a.batch // 2)]).to(a.device)
    for _ in range(a.steps):
        idx = torch.cat([grp[torch.randint(len(grp), (n,), generator=g)]
                         for grp, n in zip(groups, (a.batch // 2, a.batch - a.batch // 2))])
        x = ((images[idx] - c.offset) / c.scale).to(a.device)
        loss = binary_cross_entropy_with_logits(c.net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return c


def judges(a: argparse.Namespace) -> None:
    images, xs, ys = _labelled(a.low, a.high)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(a.seed))
    n_val = len(images) // 10
    val, tr = perm[:n_val], perm[n_val:]
    result, states = {"n_train": len(tr), "n_validation": n_val}, {}
    for name, labels in (("x", xs), ("y", ys)):
        c = train_classifier(images[tr], labels[tr], a, a.seed + (name == "y"))
        result[f"judge_{name}_validation_accuracy"] = c.accuracy(images[val], labels[val])
        states[name] = c.state()
    save_checkpoint(Path(a.out) / "judges.pt", states, {"low": a.low, "high": a.high})
    _write_json(Path(a.out) / "judges.json", result)


def joint(a: argparse.Namespace) -> None:
    states = load_checkpoint(Path(a.judges) / "judges.pt")
    images = read_images(a.generated)[0]
    want = [int(v) for v in a.target]
    hits = {name: (Classifier.from_state(states[name], a.device).logits(images) > 0).long() == want[k]
            for k, name in enumerate(("x", "y"))}
    _write_json(Path(a.out), {"generated": a.generated, "n": len(images), "rate_x": float(hits["x"].float().mean()),
                              "rate_y": float(hits["y"].float().mean()),
                              "rate_joint": float((hits["x"] & hits["y"]).float().mean())})


def augment(a: argparse.Namespace) -> None:
    d = Path(a.split)
    real = {k: read_images(d / f"d{k}.star")[0] for k in ("00", "01", "10", "11")}
    generated = read_images(a.generated)[0]
    test_open = read_images(a.test_open)[0]
    base_x = torch.cat([real["00"], real["01"], real["10"]])
    base_y = torch.cat([torch.zeros(len(real["00"]) + len(real["01"])), torch.ones(len(real["10"]))]).long()
    result = {"n_generated": len(generated), "n_test_11": len(real["11"]), "n_test_01": len(test_open)}
    for name, (x, y) in {"without": (base_x, base_y),
                         "with": (torch.cat([base_x, generated]), torch.cat([base_y, torch.ones(len(generated)).long()]))}.items():
        c = train_classifier(x, y, a, a.seed)
        acc11 = c.accuracy(real["11"], torch.ones(len(real["11"])).long())
        acc01 = c.accuracy(test_open, torch.zeros(len(test_open)).long())
        result |= {f"{name}_accuracy_real_11": acc11, f"{name}_accuracy_real_01": acc01,
                   f"{name}_balanced_accuracy_high_defocus": (acc11 + acc01) / 2}
    _write_json(Path(a.out), result)


def summary(a: argparse.Namespace) -> None:
    d = Path(a.dir)
    load = lambda p: json.loads((d / p).read_text()) if (d / p).is_file() else {}  # noqa: E731
    j = load("judges/judges.json")
    rows = ["| quantity | value |", "|---|---|",
            f"| judge X (state) validation accuracy | {j.get('judge_x_validation_accuracy', float('nan')):.3f} |",
            f"| judge Y (defocus) validation accuracy | {j.get('judge_y_validation_accuracy', float('nan')):.3f} |"]
    for variant in ("full", "no_cyc4", "no_comm"):
        r = load(f"{variant}/joint.json")
        if r:
            rows.append(f"| {variant}: generated Σ11 classified X / Y / joint | "
                        f"{r['rate_x']:.3f} / {r['rate_y']:.3f} / {r['rate_joint']:.3f} |")
    r = load("augment.json")
    for name in ("without", "with") if r else ():
        rows.append(f"| state classifier {name} generated Σ11: accuracy on real Σ11 / real Σ01 | "
                    f"{r[f'{name}_accuracy_real_11']:.3f} / {r[f'{name}_accuracy_real_01']:.3f} |")
    text = "\n".join(rows)
    (d / "summary.md").write_text(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("--low", required=True)
    p.add_argument("--high", required=True)
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(run=split)
    for name, run in (("judges", judges), ("augment", augment)):
        p = sub.add_parser(name)
        if name == "judges":
            p.add_argument("--low", required=True)
            p.add_argument("--high", required=True)
        else:
            p.add_argument("--split", required=True)
            p.add_argument("--generated", required=True)
            p.add_argument("--test-open", required=True)
        p.add_argument("-o", "--out", required=True)
        p.add_argument("--steps", type=int, default=1000)
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--width", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto")
        p.set_defaults(run=run)
    p = sub.add_parser("joint")
    p.add_argument("--judges", required=True)
    p.add_argument("--generated", required=True)
    p.add_argument("--target", default="11")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=joint)
    p = sub.add_parser("summary")
    p.add_argument("dir")
    p.set_defaults(run=summary)
    a = ap.parse_args()
    if hasattr(a, "device"):
        a.device = str(resolve_device(a.device))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    a.run(a)


if __name__ == "__main__":
    main()
