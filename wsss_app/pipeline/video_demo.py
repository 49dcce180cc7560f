"""``wsss-ext demo --task video``: self-supervised label propagation end to end
on synthetic videos.

1. Generate training and validation videos
   (:mod:`wsss_app.pipeline.synthetic_video`: textured shapes that move,
   turn and occlude over a panning background, with instance masks).
2. Train a tiny correspondence network (``python_models.create(method,
   backbone="tiny")``, MAST by default) on clips of the training videos,
   without their masks, through the method contract (``losses`` /
   ``after_step``): AdamW with a one-cycle schedule, random horizontal flips
   and time reversal.
3. Propagate each validation video's first mask with the trained network
   (``track``), with the same network before training, and with the
   copy-the-first-mask baseline (every frame predicted as frame 0).
4. Score all three by DAVIS's J, F and J&F (the 2017 semi-supervised
   protocol: every object of every video one entry, first and last frames
   left out) and write ``report.json``, ``report.md``, ``figure.png`` (frames
   with the true, propagated and copied masks) and ``checkpoint.pt`` (what
   ``wsss-ext track --checkpoint`` reads).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from wsss_ext.metrics import davis_scores, davis_summary
from wsss_app.pipeline.synthetic_video import SyntheticVideos, make_videos
from wsss_app.pipeline.tracking import save_checkpoint, track_frames
from wsss_app.pipeline.training import bar

__all__ = ["PRESETS", "VideoDemoConfig", "fit_clips", "print_summary", "run_video_demo", "run_video_demo_command"]


@dataclass
class VideoDemoConfig:
    method: str = "mast"
    n_train: int = 96
    n_val: int = 12
    train_frames: int = 10
    val_frames: int = 16
    size: int = 64
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 0
    figure_videos: int = 3
    figure_frames: int = 5


PRESETS = {
    "default": VideoDemoConfig(),
    # A seconds-long run for the test suite; its numbers mean nothing.
    "tiny": VideoDemoConfig(n_train=4, n_val=2, train_frames=5, val_frames=5, size=32, steps=3, batch_size=2,
                            figure_videos=1, figure_frames=3),
}

# The results compared, in report order.
RUNS = ("trained", "untrained", "copy_first_mask")


def fit_clips(model: torch.nn.Module, videos: torch.Tensor, *, steps: int, batch_size: int, learning_rate: float,
              clip_length: int, seed: int = 0, device: str | torch.device = "cpu", progress: bool = False,
              desc: str = "training") -> list[float]:
    """Train a video method on random clips of N x T x 3 x H x W uint8 videos.

    Each step draws ``batch_size`` clips of ``clip_length`` consecutive frames
    (random video and start), flips each horizontally and reverses it in
    time with probability 1/2 (both keep the frames a valid video), and runs
    ``losses`` / one AdamW step (weight decay 1e-4, one-cycle schedule) /
    ``after_step``.

    Returns:
        The mean loss over each tenth of the steps (fewer entries for
        fewer than ten steps). The model is left in eval mode.
    """
    n_videos, n_frames = videos.shape[:2]
    if n_frames < clip_length:
        raise ValueError(f"videos of {n_frames} frames are shorter than the method's clips of {clip_length}")
    device = torch.device(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    report_every, history, running = max(1, steps // 10), [], []
    model.train()
    for step in bar(range(steps), progress, desc=desc, unit="step"):
        index = torch.randint(n_videos, (batch_size,), generator=generator)
        start = torch.randint(n_frames - clip_length + 1, (batch_size,), generator=generator)
        clips = torch.stack([videos[i, s : s + clip_length] for i, s in zip(index.tolist(), start.tolist())])
        flip, reverse = (torch.rand(2, batch_size, generator=generator) < 0.5)
        clips[flip] = clips[flip].flip(-1)
        clips[reverse] = clips[reverse].flip(1)
        loss = model.losses({"frames": clips.to(device).float() / 255}, step)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        model.after_step(step, steps)
        running.append(float(loss.detach()))
        if len(running) == report_every or step == steps - 1:
            history.append(sum(running) / len(running))
            running = []
    model.eval()
    return history


def _evaluate(model, videos: SyntheticVideos, device, progress: bool, desc: str) -> tuple[dict, torch.Tensor]:
    """(davis_summary over the videos, N x T x H x W propagated labels)."""
    scores, predictions = [], []
    for index in bar(range(len(videos)), progress, desc=desc, unit="video", leave=False):
        first = videos.masks[index, 0]
        labels = track_frames(model, videos.frames[index], first, device)
        scores.append(davis_scores(labels, videos.masks[index], n_objects=int(videos.n_objects[index])))
        predictions.append(labels)
    return davis_summary(scores), torch.stack(predictions)


def _copy_baseline(videos: SyntheticVideos) -> tuple[dict, torch.Tensor]:
    copies = videos.masks[:, :1].expand_as(videos.masks).contiguous()
    scores = [davis_scores(copy, truth, n_objects=int(k)) for copy, truth, k in
              zip(copies, videos.masks, videos.n_objects)]
    return davis_summary(scores), copies


def run_video_demo(out_dir: str | Path, device: str = "cpu", preset: str = "default", progress: bool = True,
                   config: VideoDemoConfig | None = None) -> dict:
    """Run the demo (see the module docstring) and return its report."""
    import python_models

    if config is None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        config = PRESETS[preset]
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available here")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    train = make_videos(config.n_train, config.train_frames, config.size, seed=config.seed)
    val = make_videos(config.n_val, config.val_frames, config.size, seed=config.seed + 10_000)
    timings["dataset"] = time.perf_counter() - start

    overrides = {"backbone": "tiny"}
    torch.manual_seed(config.seed)
    model = python_models.create(config.method, **overrides).to(device)
    if not callable(getattr(model, "track", None)):
        raise ValueError(f"{config.method} is not a video method")
    start = time.perf_counter()
    untrained, _ = _evaluate(model, val, device, progress, "tracking (untrained)")
    timings["tracking_untrained"] = time.perf_counter() - start

    start = time.perf_counter()
    clip_length = int(model.example_batch()["frames"].shape[1])
    losses = fit_clips(model, train.frames, steps=config.steps, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, clip_length=clip_length, seed=config.seed, device=device,
                       progress=progress, desc=f"training {config.method}")
    timings["training"] = time.perf_counter() - start

    start = time.perf_counter()
    trained, predicted = _evaluate(model, val, device, progress, "tracking")
    timings["tracking"] = time.perf_counter() - start
    copy, copies = _copy_baseline(val)
    save_checkpoint(out_dir / "checkpoint.pt", config.method, overrides, model)

    results = {"trained": trained, "untrained": untrained, "copy_first_mask": copy}
    report = {
        "config": {**asdict(config), "preset": preset, "device": str(device), "overrides": overrides,
                   "clip_length": clip_length},
        "protocol": "DAVIS 2017 semi-supervised: J (IoU) and F (boundary F-measure, tolerance 0.008 of the "
                    "diagonal) per object, mean over its frames without the first and last; every object of "
                    "every validation video one entry; J&F = (J + F) / 2; percentages",
        "validation": {"videos": len(val), "frames": config.val_frames, "objects": trained["objects"]},
        "training_loss": losses,
        "results": {name: {key: 100 * value for key, value in result.items()
                           if key in ("J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay")}
                    for name, result in results.items()},
        "per_object_jf": {name: [50 * (row["J"] + row["F"]) for row in result["per_object"]]
                          for name, result in results.items()},
        "gain_over_copy": 100 * (trained["J&F"] - copy["J&F"]),
        "timings_seconds": timings,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    _figure(out_dir / "figure.png", val, {"propagated": predicted, "copy of frame 0": copies},
            config.figure_videos, config.figure_frames)
    return report


def _markdown(report: dict) -> str:
    names = {"trained": f"{report['config']['method']} (tiny), trained", "untrained": "the same network, untrained",
             "copy_first_mask": "copy the first mask"}
    lines = ["| propagation | J&F | J | F | J recall | F recall | J decay |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in RUNS:
        r = report["results"][name]
        lines.append(f"| {names[name]} | {r['J&F']:.1f} | {r['J']:.1f} | {r['F']:.1f} | {r['J_recall']:.1f} | "
                     f"{r['F_recall']:.1f} | {r['J_decay']:.1f} |")
    val, config = report["validation"], report["config"]
    timings = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report["timings_seconds"].items())
    return ("\n".join(lines) + f"\n\n{val['objects']} objects in {val['videos']} synthetic validation videos of "
            f"{val['frames']} frames ({config['size']} x {config['size']}), DAVIS 2017 semi-supervised protocol, "
            f"percentages. Training: {config['steps']} steps of {config['batch_size']} clips of "
            f"{config['clip_length']} frames on {config['device']}. Stage timings: {timings}.\n")


# Contour colours of labels 1, 2, ... in the figure: bright, and unlike the objects' own colours.
_CONTOURS = np.array([[255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 255, 255], [255, 128, 0], [0, 255, 0]])


def _overlay(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The frame with each object's outline (two pixels wide) drawn in its contour colour."""
    from wsss_ext.metrics import boundary_map, dilate_disk

    image = frame.copy()
    for label in range(1, int(labels.max()) + 1):
        outline = dilate_disk(boundary_map(torch.from_numpy(labels == label)), 1).numpy()
        image[outline] = _CONTOURS[(label - 1) % len(_CONTOURS)]
    return image


def _figure(path: Path, videos: SyntheticVideos, predictions: dict, n_videos: int, n_frames: int) -> None:
    """For each shown video, rows: the frames with the true masks, then each prediction's; columns: frames
    spread over the video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_videos = min(n_videos, len(videos))
    times = np.linspace(0, videos.frames.shape[1] - 1, min(n_frames, videos.frames.shape[1])).round().astype(int)
    row_names = ["ground truth"] + list(predictions)
    rows = n_videos * len(row_names)
    figure, axes = plt.subplots(rows, len(times), figsize=(1.7 * len(times), 1.75 * rows), squeeze=False)
    for v in range(n_videos):
        for r, name in enumerate(row_names):
            labels = videos.masks[v] if name == "ground truth" else predictions[name][v]
            for c, t in enumerate(times):
                axis = axes[v * len(row_names) + r, c]
                frame = videos.frames[v, t].permute(1, 2, 0).numpy()
                axis.imshow(_overlay(frame, labels[t].numpy()), interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                if r == 0 and v == 0:
                    axis.set_title(f"frame {t}", fontsize=9)
                if c == 0:
                    axis.set_ylabel(f"video {v}\n{name}" if r == 0 else name, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def print_summary(report: dict) -> None:
    print(_markdown(report))
    gain = report["gain_over_copy"]
    print(f"{report['config']['method']} after training: J&F {report['results']['trained']['J&F']:.1f}, "
          f"{'+' if gain >= 0 else ''}{gain:.1f} over copying the first mask")


def run_video_demo_command(args) -> int:
    """``wsss-ext demo --task video`` (the arguments of ``wsss-ext demo``)."""
    report = run_video_demo(args.out, device=args.device, preset=args.preset, progress=not args.no_progress)
    print_summary(report)
    print(f"wrote {args.out}/report.json, report.md, figure.png and checkpoint.pt "
          f"(wsss-ext track --checkpoint {args.out}/checkpoint.pt ...)")
    return 0
