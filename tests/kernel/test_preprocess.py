"""Preprocessing as trained: albumentations pipelines translated into the engine's tensor steps and
compared with albumentations' own output; unsupported ones refused; geometry undone on outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2  # type: ignore[import-untyped]

from bundler.dataset.preprocess import MAX_LEVELS, SUPPORTED, prove, sample_images, translate
from bundler.errors import PreprocessError
from kernel_src.errors import ModelError
from kernel_src.preprocess import Preprocess, load_preprocess, model_input, model_output
from kernel_src.spec import ModelSpec

SIZE = (64, 160)  # the "competition" image size of these tests: small, non-square


def pipelines() -> dict[str, Any]:
    """Validation pipelines as Kaggle training code writes them."""
    return {
        "resize-normalize-totensor": A.Compose([A.Resize(96, 224), A.Normalize(), ToTensorV2()]),
        "longest-pad": A.Compose(
            [
                A.LongestMaxSize(max_size=128),
                A.PadIfNeeded(min_height=64, min_width=128, border_mode=0, fill=(10, 20, 30)),
                A.Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
            ]
        ),
        "smallest-centercrop-float": A.Compose(
            [
                A.SmallestMaxSize(max_size=48),
                A.CenterCrop(32, 96),
                A.ToFloat(),
                A.Normalize(mean=0.0, std=1.0, max_pixel_value=1.0),
            ]
        ),
        "gray-crop": A.Compose([A.ToGray(p=1.0), A.Crop(5, 3, 133, 59), A.Normalize()]),
        "divisor-reflect-area": A.Compose(
            [
                A.LongestMaxSize(max_size=100, area_for_downscale="image"),
                A.PadIfNeeded(None, None, pad_height_divisor=32, pad_width_divisor=32, border_mode=4),
                A.Normalize(normalization="image_per_channel"),
            ]
        ),
        "float-resize-fromfloat": A.Compose([A.ToFloat(), A.Resize(40, 100), A.FromFloat(), A.Normalize()]),
    }


def saved(tmp_path: Path, name: str, transform: Any, data_format: str = "json") -> Path:
    path = tmp_path / f"{name}.albu.{data_format}"
    A.save(transform, str(path), data_format=data_format)
    return path


def engine(plan: Preprocess, image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None].float() / 255.0
    return plan.apply(x)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", list(pipelines()))
def test_translation_matches_albumentations(tmp_path: Path, name: str) -> None:
    path = saved(tmp_path, name, pipelines()[name])
    transform, translated = translate(path, "segmenters[0].preprocess")
    plan = Preprocess(translated.description["steps"])
    for image in sample_images(SIZE)[:1]:
        want = transform(image=image)["image"]
        want = want.numpy().transpose(1, 2, 0) if isinstance(want, torch.Tensor) else np.asarray(want, np.float32)
        got = engine(plan, image)
        assert got.shape == want.shape
        assert plan.output_size(SIZE) == want.shape[:2]
        level = (want.max(axis=(0, 1)) - want.min(axis=(0, 1))) / 255.0  # one 8-bit level per channel
        assert (np.abs(got - want) / level).max() <= MAX_LEVELS + 1e-3
    figures = prove(transform, translated, "segmenters[0].preprocess", SIZE)
    assert figures["images"] >= 1 and figures["max_levels"] <= MAX_LEVELS + 1e-3


def test_a_yaml_pipeline_is_read_too(tmp_path: Path) -> None:
    path = saved(tmp_path, "yaml", A.Compose([A.Resize(32, 96), A.Normalize()]), "yaml")
    _, translated = translate(path, "k")
    assert [s["op"] for s in translated.description["steps"]] == ["resize", "normalize"]


@pytest.mark.parametrize(
    ("transform", "named", "why"),
    [
        (A.RandomCrop(32, 32), "RandomCrop", "not a deterministic transform"),
        (A.HorizontalFlip(p=1.0), "HorizontalFlip", "not a deterministic transform"),
        (A.Resize(32, 32, p=0.5), "Resize", "p = 0.5"),
        (A.PadIfNeeded(80, 200, position="random"), "PadIfNeeded", "random"),
        (A.LongestMaxSize(max_size=[64, 96]), "LongestMaxSize", "at random"),
        (A.CenterCrop(32, 32, pad_if_needed=True), "CenterCrop", "pad_if_needed"),
        (A.ToGray(num_output_channels=1, p=1.0), "ToGray", "num_output_channels"),
    ],
)
def test_unsupported_transforms_are_refused_by_name(tmp_path: Path, transform: Any, named: str, why: str) -> None:
    path = saved(tmp_path, "bad", A.Compose([A.Resize(64, 160), transform, A.Normalize()]))
    with pytest.raises(PreprocessError) as info:
        translate(path, "bundle.toml segmenters[0].preprocess")
    message = str(info.value)
    assert message.startswith(f"bundle.toml segmenters[0].preprocess: {named} ")
    assert why in message and "supported transforms: " + ", ".join(SUPPORTED) in message
    assert "\n" not in message


def test_a_wrong_translation_fails_the_proof_naming_the_transform(tmp_path: Path) -> None:
    path = saved(tmp_path, "p", A.Compose([A.Resize(48, 120), A.Normalize()]))
    transform, translated = translate(path, "k")
    translated.description["steps"][1]["mean"][0] += 10.0  # a mean copied by hand, slightly wrong
    with pytest.raises(PreprocessError, match=r"k: Normalize on a 64x160 image: the engine differs .* 8-bit levels"):
        prove(transform, translated, "k", SIZE)


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PreprocessError, match=r"k = '.*nope.json' does not exist; save it with A.save"):
        translate(tmp_path / "nope.json", "k")
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PreprocessError, match=r"k: albumentations cannot load .*junk.json as json"):
        translate(tmp_path / "junk.json", "k")
    with pytest.raises(ModelError, match=r"model 'm': preprocessing file .* is missing from the bundle"):
        load_preprocess(tmp_path / "m.preprocess.json", "m")
    (tmp_path / "old.preprocess.json").write_text('{"format": 9, "steps": []}', encoding="utf-8")
    with pytest.raises(ModelError, match="not a preprocessing description of format 1"):
        load_preprocess(tmp_path / "old.preprocess.json", "m")
    with pytest.raises(ModelError, match=r"step 0 \('blur'\) is not one of"):
        Preprocess([{"op": "blur"}], name="m")


def test_geometry_is_undone_pad_cropped_crop_placed_back() -> None:
    h, w = 50, 150
    plan = Preprocess(
        [
            {"op": "pad", "min_height": 64, "min_width": 192, "position": "center", "border": "constant", "fill": [0]},
            {"op": "crop", "x_min": 10, "y_min": 4, "x_max": 180, "y_max": 60},
        ]
    )
    assert plan.output_size((h, w)) == (56, 170)
    # the model's output: each pixel's (row, col) in the padded frame, so the undo can be checked
    rows = torch.arange(4, 60, dtype=torch.float32)[:, None].expand(56, 170)
    cols = torch.arange(10, 180, dtype=torch.float32)[None, :].expand(56, 170)
    out = torch.stack([rows, cols])[None] + 1  # +1: 0 means "no prediction"
    back = plan.undo(out, (h, w))
    assert back.shape == (1, 2, h, w)
    top, left = 7, 21  # (64 - 50) / 2 and (192 - 150) / 2
    for r, c in ((0, 0), (10, 40), (49, 149), (30, 100)):
        padded_r, padded_c = r + top, c + left
        inside = 4 <= padded_r < 60 and 10 <= padded_c < 180
        want = (padded_r + 1, padded_c + 1) if inside else (0, 0)
        assert tuple(back[0, :, r, c].tolist()) == want


def test_resize_is_resized_back_and_bgr_swaps_channels() -> None:
    plan = Preprocess([{"op": "resize", "height": 32, "width": 32, "interpolation": "linear"}])
    out = torch.full((2, 4, 32, 32), 0.25)
    assert torch.equal(plan.undo(out, (64, 160)), torch.full((2, 4, 64, 160), 0.25))
    x = torch.rand(1, 3, 8, 8)
    rgb = ModelSpec(name="m", kind="torchscript", file="m.pt", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    bgr = ModelSpec(
        name="m", kind="torchscript", file="m.pt", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channels="bgr"
    )
    assert torch.equal(model_input(x, rgb, None), x)
    assert torch.equal(model_input(x, bgr, None), x[:, [2, 1, 0]])
    assert model_output(torch.zeros(1, 4, 8, 8), None, (16, 16)).shape == (1, 4, 16, 16)


class Recorder(torch.nn.Module):
    """Records what it is fed; answers a certain class 0 (logit 20) and nothing else, everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out = torch.full((x.shape[0], 4, x.shape[2], x.shape[3]), -20.0)
        out[:, 0] = 20.0
        return out


@pytest.mark.parametrize("channels", ["rgb", "bgr"])
def test_the_engine_feeds_the_model_what_albumentations_made_and_maps_its_output_back(
    tmp_path: Path, channels: str
) -> None:
    from kernel_src.devices import resolve_devices
    from kernel_src.models import LoadedModel
    from kernel_src.predict import Predictor
    from kernel_src.profiler import Profiler
    from kernel_src.spec import InferenceSpec

    transform = A.Compose(
        [
            A.PadIfNeeded(min_height=96, min_width=192, border_mode=0, fill=0),
            A.Crop(x_min=20, y_min=8, x_max=180, y_max=88),
            A.Normalize(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)),
            ToTensorV2(),
        ]
    )
    _, translated = translate(saved(tmp_path, "p", transform), "k")
    plan = Preprocess(translated.description["steps"])
    spec = ModelSpec(name="rec", kind="torchscript", file="rec.pt", channels=channels)
    recorder = Recorder()
    model = LoadedModel(spec, (recorder,), ("identity",), preprocess=plan)
    inference = InferenceSpec(image_height=SIZE[0], image_width=SIZE[1], segmenters=(spec,))
    devices = resolve_devices("cpu", memory_format="contiguous", precision="fp32")
    predictor = Predictor(inference, [], [model], devices, Profiler(0.0, torch_version=torch.__version__))
    images = np.stack([image[: SIZE[0], : SIZE[1]] for image in sample_images(SIZE)[:1] * 2])
    images[1] = images[1][::-1].copy()  # two different images
    result = predictor.predict(images)

    (fed,) = recorder.seen
    for i, image in enumerate(images):
        source = image[:, :, ::-1].copy() if channels == "bgr" else image  # trained on cv2.imread's order
        want = transform(image=source)["image"].numpy()
        level = (want.max(axis=(1, 2)) - want.min(axis=(1, 2)))[:, None, None] / 255.0
        assert fed[i].shape == want.shape
        assert (np.abs(fed[i].numpy() - want) / level).max() <= MAX_LEVELS + 1e-3
    # the crop's window, in the image's frame: rows 8-16 .. 88-16, columns 20-16 .. 180-16 (pad 16 each side)
    probs = result.probs
    assert probs.shape == (2, 4, *SIZE)
    inside = probs[:, 0, 0:72, 4:160]
    assert np.all(inside > 0.99) and np.all(probs[:, 0, :, :4] == 0) and np.all(probs[:, 1:] < 1e-6)


def test_normalisation_constants_are_made_once_per_device_and_dtype() -> None:
    from kernel_src.preprocess import constant, model_input
    from kernel_src.spec import ModelSpec

    constant.cache_clear()
    spec = ModelSpec(name="m", kind="timm", file="m.safetensors", arch="resnet18")
    x = torch.rand(2, 3, 8, 8)
    first = model_input(x, spec, None)
    for _ in range(3):
        assert torch.equal(model_input(x, spec, None), first)
    assert constant.cache_info().misses == 2 and constant.cache_info().hits == 6  # mean and std, once each
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(first, (x - mean) / std)
