"""``tools/benchmark.py --data``: training image pipeline throughput from real JPEG files.

The files are the synthetic world's scenes rendered at 512 px and written as JPEG
(quality 90), the size ALBEF pre-training crops from. Per image: decode, RandomResizedCrop
to 256 px (bicubic), horizontal flip, RandAugment (N 2, M 7), to tensor and normalise,
i.e. ``albef_image_train`` with its pre-training defaults, each backend decoding the file
as the training datasets do (``read_image_for``: PIL, or ``torchvision.io`` for ``tensor``).

"Images per second per core" is the count divided by the CPU seconds of the process
with one intra-op thread (``time.process_time``), so it does not depend on how busy the
other cores are. A DataLoader with ``workers`` processes is also timed end to end (wall
clock, batch 64, pinned memory when asked) to show how the per-core figure scales.

Synthetic scenes are flat colours: their JPEGs are small (about 11 KB at 512 px) and
decode faster than photographs, which run at about 40-80 KB at that size; the decode
share below is therefore a lower bound.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["write_world_jpegs", "per_core_throughput", "loader_throughput", "run_data_benchmark",
           "format_data_benchmark", "NODE_TARGET_IMG_PER_S"]

NODE_TARGET_IMG_PER_S = 8000  # 8 GPUs at 1,000 img/s each
SOURCE_SIZE = 512


def write_world_jpegs(folder: Path, count: int, size: int = SOURCE_SIZE) -> List[Path]:
    """Render ``count`` scenes of the synthetic world at ``size`` px into ``folder`` as JPEG."""
    from albef_plugin.datasets.synthetic.generate import WorldSpec, make_scene
    from albef_plugin.datasets.synthetic.world import render_scene

    spec = WorldSpec(num_train=count, image_size=size)
    paths = []
    for index in range(count):
        scene = make_scene(spec, "train", index)
        path = folder / f"{index:06d}.jpg"
        render_scene(scene.background, scene.objects, size).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def _cpu_ms(fn: Callable[[int], Any], count: int) -> float:
    start = time.process_time()
    for index in range(count):
        fn(index)
    return (time.process_time() - start) / count * 1e3


def per_core_throughput(paths: Sequence[Path], backend: str, samples: int,
                        image_size: int = 256) -> Dict[str, Any]:
    """CPU milliseconds per image of the whole pipeline and of its stages, one thread."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    from albef_plugin.datasets.images import read_image_for, read_rgb, read_rgb_tensor
    from albef_plugin.processors.image import ImageTrainProcessor

    torch.set_num_threads(1)
    proc = ImageTrainProcessor(image_size=image_size, backend=backend)
    n = len(paths)
    # as the datasets do: decode into what the processor takes (PIL, or torchvision.io's tensor)
    full = lambda i: proc(read_image_for(proc, str(paths[i % n])))  # noqa: E731
    _cpu_ms(full, min(8, samples))  # warm caches and lazy imports
    total = _cpu_ms(full, samples)
    result: Dict[str, Any] = {"backend": backend, "ms_per_image": total,
                              "img_per_s_per_core": 1e3 / total}
    if backend == "pil":  # where the time goes, stage by stage
        images = [read_rgb(str(p)) for p in paths]
        crop = T.RandomResizedCrop(image_size, scale=(0.2, 1.0),
                                   interpolation=InterpolationMode.BICUBIC)
        crops = [crop(img) for img in images]
        augment = proc.transform.transforms[2]
        tail = T.Compose(proc.transform.transforms[3:])
        result["stages_ms"] = {
            "decode": _cpu_ms(lambda i: read_rgb(str(paths[i % n])), samples),
            "random resized crop": _cpu_ms(lambda i: crop(images[i % n]), samples),
            "RandAugment": _cpu_ms(lambda i: augment(crops[i % n]), samples),
            "to tensor + normalise": _cpu_ms(lambda i: tail(crops[i % n]), samples),
        }
        result["jpeg_kib_mean"] = statistics.fmean(p.stat().st_size for p in paths) / 1024
        with Image.open(paths[0]) as img:
            result["source_size"] = img.size
    else:
        decoded = [read_rgb_tensor(str(p)) for p in paths]
        result["stages_ms"] = {
            "decode (torchvision.io)": _cpu_ms(lambda i: read_rgb_tensor(str(paths[i % n])), samples),
            "crop, flip, RandAugment, normalise": _cpu_ms(lambda i: proc(decoded[i % n]), samples),
        }
    return result


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], backend: str, image_size: int) -> None:
        from albef_plugin.processors.image import ImageTrainProcessor

        self.paths = [str(p) for p in paths]
        self.proc = ImageTrainProcessor(image_size=image_size, backend=backend)

    def __len__(self) -> int:
        return 1 << 30  # the loader is stopped after the batches it needs

    def __getitem__(self, index: int) -> torch.Tensor:
        from albef_plugin.datasets.images import read_image_for

        return self.proc(read_image_for(self.proc, self.paths[index % len(self.paths)]))


def loader_throughput(paths: Sequence[Path], backend: str, workers: int, batches: int,
                      batch_size: int = 64, pin_memory: bool = False,
                      image_size: int = 256) -> Dict[str, Any]:
    """Wall-clock img/s through a DataLoader (first two batches untimed: worker start-up)."""
    loader = torch.utils.data.DataLoader(
        _FileDataset(paths, backend, image_size), batch_size=batch_size, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=False,
        worker_init_fn=lambda _: torch.set_num_threads(1))
    iterator = iter(loader)
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return {"backend": backend, "workers": workers, "pin_memory": pin_memory,
            "img_per_s": batches * batch_size / elapsed}


def run_data_benchmark(samples: int = 256, files: int = 64, workers: int = 2,
                       loader_batches: int = 8, folder: Optional[str] = None) -> Dict[str, Any]:
    from albef_plugin.benchmarks.train_step import machine_load

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_world_jpegs(Path(folder or tmp), files)
        per_core = [per_core_throughput(paths, backend, samples) for backend in ("pil", "tensor")]
        loaders = ([loader_throughput(paths, backend, workers, loader_batches)
                    for backend in ("pil", "tensor")] if workers > 0 else [])
    return {"per_core": per_core, "loaders": loaders, "samples": samples, "files": files,
            **machine_load()}


def format_data_benchmark(result: Dict[str, Any]) -> str:
    pil = result["per_core"][0]
    lines = [f"training image pipeline, 512-px JPEGs of the synthetic world "
             f"(mean {pil['jpeg_kib_mean']:.1f} KiB) -> 256 px, {result['samples']} images, "
             f"1 thread, CPU time", "",
             "| backend | ms / image | img/s per core | cores for 8,000 img/s |", "|---|---|---|---|"]
    for row in result["per_core"]:
        lines.append(f"| {row['backend']} | {row['ms_per_image']:.2f} | "
                     f"{row['img_per_s_per_core']:.0f} | "
                     f"{NODE_TARGET_IMG_PER_S / row['img_per_s_per_core']:.0f} |")
    lines.append("")
    for row in result["per_core"]:
        lines.append(f"stages of the {row['backend']} backend (ms / image): " + ", ".join(
            f"{name} {ms:.2f}" for name, ms in row["stages_ms"].items()))
    for row in result["loaders"]:
        lines.append(f"DataLoader, {row['workers']} workers, backend {row['backend']}: "
                     f"{row['img_per_s']:.0f} img/s wall")
    lines.append(f"machine load (1-min average) {result['load_1min']:.2f} on "
                 f"{result['cpu_count']} cores")
    return "\n".join(lines)
