"""Generated Triton configs: committed copies are current, and every ensemble step wires up
tensors the models actually declare, with matching types (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from visual_search import contract as C
from visual_search.triton import names as N
from visual_search.triton.repository import ENSEMBLES, Options, build_configs, render, write_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_committed_configs_match_regeneration(flavour: str, tmp_path: Path) -> None:
    write_repository(Options(flavour=flavour), tmp_path, configs_only=True)
    committed = ROOT / "model_repository" / flavour
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in committed.iterdir() if p.is_dir())
    for name in names:
        new = (tmp_path / name / "config.pbtxt").read_text()
        old = (committed / name / "config.pbtxt").read_text()
        assert new == old, f"{flavour}/{name} is stale: run vsearch triton generate --configs-only"


def test_generation_is_deterministic() -> None:
    a = {k: render(v) for k, v in build_configs(Options()).items()}
    b = {k: render(v) for k, v in build_configs(Options()).items()}
    assert a == b


def _io(cfg: mc.ModelConfig) -> tuple[dict[str, mc.ModelInput], dict[str, mc.ModelOutput]]:
    return {t.name: t for t in cfg.input}, {t.name: t for t in cfg.output}


def _full_dims(cfg: mc.ModelConfig, dims: list[int]) -> list[int]:
    return ([-1] if cfg.max_batch_size > 0 else []) + list(dims)


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
@pytest.mark.parametrize("batching", [True, False])
def test_ensemble_maps_match_declared_io(flavour: str, batching: bool) -> None:
    configs = build_configs(Options(flavour=flavour, batching=batching))
    for ens_name in ENSEMBLES:
        ens = configs[ens_name]
        assert ens.platform == "ensemble"
        ens_in, ens_out = _io(ens)
        # tensor name -> (dtype, full dims) of whatever produces it
        produced: dict[str, tuple[int, list[int]]] = {
            n: (t.data_type, list(t.dims)) for n, t in ens_in.items()
        }
        for step in ens.ensemble_scheduling.step:
            model = configs[step.model_name]
            m_in, m_out = _io(model)
            for key, tensor in step.input_map.items():
                assert key in m_in, f"{ens_name}: {step.model_name} has no input {key}"
                assert tensor in produced, f"{ens_name}: {tensor} used before it is produced"
                dtype, dims = produced[tensor]
                assert dtype == m_in[key].data_type, f"{ens_name}: dtype of {tensor} -> {key}"
                assert _compatible(dims, _full_dims(model, list(m_in[key].dims))), (ens_name, tensor, key)
            required = {n for n, t in m_in.items() if not t.optional}
            assert required <= set(step.input_map), f"{ens_name}: {step.model_name} misses {required}"
            for key, tensor in step.output_map.items():
                assert key in m_out, f"{ens_name}: {step.model_name} has no output {key}"
                assert tensor not in produced, f"{ens_name}: {tensor} produced twice"
                produced[tensor] = (m_out[key].data_type, _full_dims(model, list(m_out[key].dims)))
        for name, out in ens_out.items():
            assert name in produced, f"{ens_name}: output {name} is never produced"
            assert produced[name][0] == out.data_type
            assert _compatible(produced[name][1], list(out.dims)), (ens_name, name)


def test_contract_values_flow_into_configs() -> None:
    c = build_configs(Options())
    det, enc = c[N.DETECTOR], c[N.ENCODER]
    assert det.input[0].name == C.DETECTOR_INPUT_NAME
    assert list(det.input[0].dims) == [3, C.DETECTOR_INPUT_SIZE, C.DETECTOR_INPUT_SIZE]
    assert (
        det.output[0].name == C.DETECTOR_OUTPUT_NAME and det.output[0].dims[0] == 4 + C.DETECTOR_NUM_CLASSES
    )
    assert enc.input[0].name == C.ENCODER_INPUT_NAME
    assert list(enc.output[0].dims) == [C.EMBEDDING_DIM] and enc.output[0].data_type == mc.TYPE_FP16
    # a detect_and_embed request is one encoder request of objects + whole image
    assert enc.max_batch_size >= C.DETECTOR_MAX_DETECTIONS + 1
    for name in (N.ENCODER, N.EMBED, N.DETECT_AND_EMBED):
        assert N.ENCODER_VERSION_PARAM in c[name].parameters


def test_flavours_differ_only_where_intended() -> None:
    cpu, gpu = build_configs(Options(flavour="cpu")), build_configs(Options(flavour="gpu"))
    for name in (N.DETECTOR, N.ENCODER):
        assert cpu[name].backend == "python"
        assert gpu[name].platform == "onnxruntime_onnx"
        assert gpu[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert cpu[name].HasField("dynamic_batching") and gpu[name].HasField("dynamic_batching")
    trt = build_configs(Options(flavour="gpu", gpu_backend="tensorrt"))
    assert trt[N.DETECTOR].platform == "tensorrt_plan"
    for name in (N.PREPROCESS, N.POSTPROCESS, N.CROP, N.SPLIT, *ENSEMBLES):
        assert render(cpu[name]) == render(gpu[name])
    off = build_configs(Options(batching=False))
    assert not off[N.DETECTOR].HasField("dynamic_batching")


def test_committed_configs_parse_as_model_config() -> None:
    for path in sorted((ROOT / "model_repository").glob("*/*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
        assert cfg.name == path.parent.name
