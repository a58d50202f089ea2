"""Write requirements/runtime.txt and requirements/dev.txt from the installed environment (`make lock`).

runtime.txt: every installed distribution that vae_dynamics and its workflow, demo, export, slurm,
wandb and mlflow extras need, followed through their own requirements (with their environment
markers); dev.txt: every other installed distribution, after `-r runtime.txt`. Run it in a venv
installed with `make install LOCK=0`."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

RUNTIME_EXTRAS = ("workflow", "demo", "export", "slurm", "wandb", "mlflow")
REPO = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure() -> set[str]:
    seen: set[str] = set()
    todo = [(norm("vae_dynamics"), set(RUNTIME_EXTRAS))]
    while todo:
        name, extras = todo.pop()
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            dep = norm(req.name)
            if dep != "vae-dynamics" and dep not in seen:
                seen.add(dep)
                todo.append((dep, set(req.extras)))
            elif dep == "vae-dynamics" and req.extras - extras:
                todo.append((dep, set(req.extras)))
    return seen


def header(path: Path) -> str:
    lines = path.read_text().splitlines() if path.exists() else []
    return "".join(f"{line}\n" for line in lines if line.startswith("#"))


def main() -> None:
    installed = {
        norm(d.metadata["Name"]): f"{d.metadata['Name']}=={d.version.split('+')[0]}"
        for d in metadata.distributions()
        if norm(d.metadata["Name"]) not in ("vae-dynamics", "pip")
    }
    runtime = runtime_closure()
    missing = sorted(runtime - installed.keys())
    if missing:
        sys.exit(f"not installed, cannot be locked: {missing} (make install LOCK=0 first)")
    pins = sorted(installed.items())
    folder = REPO / "requirements"
    rt, dev = folder / "runtime.txt", folder / "dev.txt"
    rt_text = header(rt) + "".join(f"{p}\n" for n, p in pins if n in runtime)
    dev_text = header(dev) + "-r runtime.txt\n" + "".join(f"{p}\n" for n, p in pins if n not in runtime)
    rt.write_text(rt_text)
    dev.write_text(dev_text)
    print(f"{rt}: {sum(n in runtime for n, _ in pins)} pins; {dev}: {sum(n not in runtime for n, _ in pins)}")


if __name__ == "__main__":
    main()
