"""Streaming engine: exactness for any chunking (MLX and ONNX Runtime), batching,
state save/restore, refusals, and the detector."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgelstm  # noqa: F401  (loads the BLAS before mlx.core)
from edgelstm.errors import ConfigError, DataError, EdgeLSTMError, UnsupportedError
from edgelstm.frontend.features import FeatureConfig, SensorConfig
from edgelstm.nn.layers import GRU, LSTM, RNN
from edgelstm.nn.model import SequenceModel
from edgelstm.streaming.detect import Detector
from edgelstm.streaming.session import ChunkResult, Stream, StreamingSession, stream_chunks

ATOL = 1e-5
FC = FeatureConfig(kind="mfcc", sample_rate=8000, n_mels=20, n_mfcc=6)
HYP = settings(max_examples=20, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])


def _model(cell=LSTM, head="frame", features=None, normalize=False, size=6, labels=3):
    mx.random.seed(1)
    m = SequenceModel(cell(size, 8, num_layers=2), labels=[f"c{k}" for k in range(labels)],
                      head=head, features=features, normalize=normalize)
    if normalize:
        m.norm.mean = mx.array(np.linspace(-1, 1, size, dtype=np.float32))
        m.norm.std = mx.array(np.linspace(0.5, 2, size, dtype=np.float32))
    m.eval()
    return m


def _full(model, frames):
    return np.array(model(mx.array(frames[None])))[0]


def _split(x, sizes):
    """Chunks of ``x`` with the given sizes (cycled) until it is used up."""
    out, pos, k = [], 0, 0
    while pos < len(x):
        out.append(x[pos:pos + sizes[k % len(sizes)]])
        pos += sizes[k % len(sizes)]
        k += 1
    return out


def _stream(session, chunks):
    results = list(stream_chunks(session, chunks))
    return results, np.concatenate([r.output for r in results])


@pytest.fixture(scope="module")
def frame_models(tmp_path_factory):
    """(model, streaming ONNX path) per cell type, normalisation inside the model."""
    from edgelstm.converters import to_onnx

    out = {}
    for name, cell in (("lstm", LSTM), ("gru", GRU), ("rnn", RNN)):
        m = _model(cell, normalize=True)
        path = tmp_path_factory.mktemp(name) / "m.onnx"
        to_onnx(m, path, streaming=True)
        out[name] = (m, path)
    return out


@pytest.fixture(scope="module")
def ort_sessions(frame_models):
    return {k: StreamingSession.from_onnx(p, chunk_frames=4) for k, (m, p) in frame_models.items()}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@HYP
@given(sizes=st.lists(st.integers(1, 17), min_size=1, max_size=6),
       chunk=st.integers(1, 12), T=st.integers(1, 60))
def test_any_chunking_equals_full_pass_mlx(frame_models, cell, sizes, chunk, T):
    model, _ = frame_models[cell]
    x = np.random.default_rng(T).standard_normal((T, 6)).astype(np.float32)
    session = StreamingSession.from_model(model, chunk_frames=chunk)
    results, y = _stream(session, _split(x, sizes))
    # bit for bit: the kernels form each row's sums the same way whatever the chunk
    np.testing.assert_array_equal(y, _full(model, x))
    assert [r.start for r in results] == list(range(0, T, chunk))
    assert results[-1].end == T and all(r.end - r.start <= chunk for r in results)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@HYP
@given(sizes=st.lists(st.integers(1, 17), min_size=1, max_size=6),
       chunk=st.integers(1, 12), T=st.integers(1, 60))
def test_any_chunking_equals_full_pass_onnxruntime(frame_models, ort_sessions, cell, sizes,
                                                   chunk, T):
    model, _ = frame_models[cell]
    session = StreamingSession(ort_sessions[cell].backend, chunk_frames=chunk)
    x = np.random.default_rng(T).standard_normal((T, 6)).astype(np.float32)
    _, y = _stream(session, _split(x, sizes))
    np.testing.assert_allclose(y, _full(model, x), atol=ATOL)
    # and against ONNX Runtime's own one-shot pass
    full, _ = session.backend.run(x[None], session.backend.zero_state(1))
    np.testing.assert_allclose(y, full[0], atol=ATOL)


@HYP
@given(sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5), chunk=st.integers(1, 9))
def test_audio_chunking_equals_offline_features_and_model(sizes, chunk):
    model = _model(features=FC.to_dict())
    wav = np.random.default_rng(len(sizes)).standard_normal(4000).astype(np.float32) * 0.1
    session = StreamingSession.from_model(model, chunk_frames=chunk)
    assert session.is_speech and session.frame_ms == 10.0
    _, y = _stream(session, _split(wav, sizes))
    np.testing.assert_allclose(y, _full(model, np.array(FC.compute(wav))), atol=ATOL)


def test_audio_onnxruntime_and_speech_session_props(tmp_path):
    from edgelstm.converters import to_onnx

    model = _model(features=FC.to_dict())
    to_onnx(model, tmp_path / "s.onnx", streaming=True)
    session = StreamingSession.from_path(tmp_path / "s.onnx", chunk_frames=3)
    assert session.backend.name == "onnxruntime" and session.sample_rate == 8000
    assert session.labels == ["c0", "c1", "c2"]
    wav = np.random.default_rng(0).standard_normal(3000).astype(np.float32) * 0.1
    _, y = _stream(session, _split(wav, [123, 801, 7]))
    np.testing.assert_allclose(y, _full(model, np.array(FC.compute(wav))), atol=ATOL)


def test_accept_waveform_at_another_rate_resamples():
    from edgelstm.frontend.resample import resample

    model = _model(features=FC.to_dict())
    session = StreamingSession.from_model(model, chunk_frames=5)
    wav16 = np.random.default_rng(3).standard_normal(6000).astype(np.float32) * 0.1
    s = session.create_stream()
    for c in _split(wav16, [1000, 333]):
        s.accept_waveform(c, sample_rate=16000)
    s.input_finished()
    y = np.concatenate([r.output for r in session.process(s)])
    ref = np.array(FC.compute(resample(wav16, 16000, 8000).astype(np.float32)))
    np.testing.assert_allclose(y, _full(model, ref), atol=1e-4)
    with pytest.raises(DataError, match="changed mid-stream"):
        s2 = session.create_stream()
        s2.accept_waveform(wav16[:100], 16000)
        s2.accept_waveform(wav16[:100], 8000)


def test_sensor_front_end_normalises_and_resamples():
    sc = SensorConfig(mean=[1.0, -2.0], std=[2.0, 0.5], rate=50, resample_from=100)
    model = _model(size=2, features=sc.to_dict())
    session = StreamingSession.from_model(model, chunk_frames=4)
    assert not session.is_speech and session.frame_ms == 20.0
    x = np.random.default_rng(0).standard_normal((200, 2)).astype(np.float32)
    _, y = _stream(session, _split(x, [7, 13, 1]))
    np.testing.assert_allclose(y, _full(model, np.array(sc.compute(x))), atol=ATOL)


def test_per_sequence_head_emits_head_on_state_after_each_chunk():
    model = _model(GRU, head="sequence")
    x = np.random.default_rng(1).standard_normal((23, 6)).astype(np.float32)
    session = StreamingSession.from_model(model, chunk_frames=5)
    results, _ = _stream(session, [x])
    assert [r.output.shape for r in results] == [(1, 3)] * 5
    for r in results:  # the model's answer for the prefix x[:end]
        np.testing.assert_allclose(r.output[0], _full(model, x[:r.end]), atol=ATOL)


def test_bare_recurrent_stack_streams():
    mx.random.seed(2)
    lstm = LSTM(4, 5, num_layers=3)
    x = np.random.default_rng(2).standard_normal((17, 4)).astype(np.float32)
    session = StreamingSession.from_model(lstm, chunk_frames=4)
    results, y = _stream(session, _split(x, [3]))
    np.testing.assert_allclose(y, np.array(lstm(mx.array(x))[0]), atol=ATOL)
    assert results[0].label is None and "label" not in results[0].to_dict()


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
def test_step_many_batches_streams_of_any_length(frame_models, ort_sessions, backend):
    model, _ = frame_models["lstm"]
    session = (StreamingSession.from_model(model, chunk_frames=4) if backend == "mlx"
               else ort_sessions["lstm"])
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((T, 6)).astype(np.float32) for T in (13, 4, 9, 1)]
    streams = [session.create_stream() for _ in xs]
    for s, x in zip(streams, xs, strict=True):
        s.accept_frames(x)
        s.input_finished()
    outs = [[] for _ in xs]
    while any(session.is_ready(s) for s in streams):
        for k, r in enumerate(session.step_many(streams)):
            if r is not None:
                outs[k].append(r.output)
    for x, o in zip(xs, outs, strict=True):
        np.testing.assert_allclose(np.concatenate(o), _full(model, x), atol=ATOL)
    assert session.step_many(streams) == [None] * 4
    with pytest.raises(EdgeLSTMError, match="twice"):
        session.step_many([streams[0], streams[0]])


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
def test_save_and_restore_mid_stream(tmp_path, frame_models, backend):
    model, path = frame_models["gru"]
    session = (StreamingSession.from_model(model, chunk_frames=3) if backend == "mlx"
               else StreamingSession.from_onnx(path, chunk_frames=3))
    x = np.random.default_rng(6).standard_normal((20, 6)).astype(np.float32)
    s = session.create_stream()
    s.accept_frames(x[:11])
    first = session.process(s)  # leaves 2 frames pending
    assert s.frames_ready == 2
    s.save(tmp_path / "s.safetensors")
    r = session.load_stream(tmp_path / "s.safetensors")
    assert (r.frames_done, r.num_chunks, r.frames_ready) == (9, 3, 2)
    r.accept_frames(x[11:])
    r.input_finished()
    rest = session.process(r)
    np.testing.assert_allclose(np.concatenate([c.output for c in first + rest]),
                               _full(model, x), atol=ATOL)
    assert rest[0].chunk == 3 and rest[0].start == 9
    # in memory, too
    again = Stream.from_state(session, s.state, s.meta_state)
    np.testing.assert_array_equal(again.state["h"], s.state["h"])


def test_restore_speech_stream_keeps_front_end_overlap(tmp_path):
    model = _model(features=FC.to_dict())
    session = StreamingSession.from_model(model, chunk_frames=4)
    wav = np.random.default_rng(7).standard_normal(3000).astype(np.float32) * 0.1
    s = session.create_stream()
    s.accept_waveform(wav[:1234], sample_rate=16000)  # resampler state is saved too
    first = session.process(s)
    s.save(tmp_path / "a.safetensors")
    r = session.load_stream(tmp_path / "a.safetensors")
    r.accept_waveform(wav[1234:], sample_rate=16000)
    r.input_finished()
    s.accept_waveform(wav[1234:], sample_rate=16000)
    s.input_finished()
    want = np.concatenate([c.output for c in session.process(s)])
    got = np.concatenate([c.output for c in session.process(r)])
    assert len(first) > 0
    np.testing.assert_array_equal(got, want)


def test_restore_into_another_model_is_refused(frame_models):
    lstm, _ = frame_models["lstm"]
    gru, _ = frame_models["gru"]
    s = StreamingSession.from_model(lstm).create_stream()
    with pytest.raises(ConfigError, match="does not fit this model: cell"):
        StreamingSession.from_model(gru).create_stream(s.state, s.meta_state)


def test_reset_starts_over(frame_models):
    model, _ = frame_models["rnn"]
    session = StreamingSession.from_model(model, chunk_frames=2)
    x = np.random.default_rng(8).standard_normal((6, 6)).astype(np.float32)
    s = session.create_stream()
    s.accept_frames(x)
    a = session.process(s)
    s.reset()
    s.accept_frames(x)
    b = session.process(s)
    assert [r.chunk for r in b] == [0, 1, 2]
    np.testing.assert_array_equal(np.concatenate([r.output for r in a]),
                                  np.concatenate([r.output for r in b]))


def test_bidirectional_is_refused_on_both_backends(tmp_path):
    from edgelstm.converters import to_onnx

    m = SequenceModel(LSTM(3, 4, bidirectional=True), num_outputs=2)
    with pytest.raises(UnsupportedError, match="cannot stream a bidirectional model"):
        StreamingSession.from_model(m)
    to_onnx(m, tmp_path / "bi.onnx")
    with pytest.raises(UnsupportedError, match="cannot stream a bidirectional model"):
        StreamingSession.from_onnx(tmp_path / "bi.onnx")


def test_non_streaming_onnx_is_refused(tmp_path):
    from edgelstm.converters import to_onnx

    to_onnx(_model(), tmp_path / "plain.onnx")
    with pytest.raises(UnsupportedError, match="not a streaming export .no h0 input."):
        StreamingSession.from_onnx(tmp_path / "plain.onnx")


def test_session_is_immutable_and_inputs_are_checked(frame_models):
    model, _ = frame_models["lstm"]
    session = StreamingSession.from_model(model)
    with pytest.raises(AttributeError, match="immutable"):
        session.chunk_frames = 3
    s = session.create_stream()
    with pytest.raises(DataError, match="frames have 5 features, the model takes 6"):
        s.accept_frames(np.zeros((2, 5)))
    with pytest.raises(DataError, match="no speech front end"):
        s.accept_waveform(np.zeros(100))
    s.input_finished()
    with pytest.raises(EdgeLSTMError, match="input_finished"):
        s.accept_frames(np.zeros((1, 6)))
    with pytest.raises(ConfigError, match="chunk_frames"):
        StreamingSession.from_model(model, chunk_frames=0)


def test_scores_are_mean_posteriors_and_json_shape(frame_models):
    model, _ = frame_models["lstm"]
    session = StreamingSession.from_model(model, chunk_frames=4)
    s = session.create_stream()
    s.accept_frames(np.random.default_rng(9).standard_normal((4, 6)))
    r = session.step(s)
    d = r.to_dict()
    assert set(d) == {"chunk", "start", "end", "latency_ms", "output", "label", "scores"}
    assert (d["chunk"], d["start"], d["end"]) == (0, 0, 4) and len(d["output"]) == 4
    assert abs(sum(r.scores.values()) - 1) < 1e-5 and r.label == max(r.scores, key=r.scores.get)
    assert r.latency_ms > 0


def test_detector_fires_on_rising_edges_with_smoothing():
    labels = ["_silence_", "yes", "no"]
    det = Detector(labels, threshold=0.6, smooth=2, frame_ms=10.0)
    big = 8.0

    def chunk(k, start, rows):
        out = np.zeros((len(rows), 3), dtype=np.float32)
        out[np.arange(len(rows)), rows] = big
        return ChunkResult(k, start, start + len(rows), out, 1.0)

    events = det.update(chunk(0, 0, [0, 0, 1, 1, 1]))  # silence never fires
    assert [(e.label, e.frame) for e in events] == [("yes", 3)]  # smoothed over 2 frames
    assert det.update(chunk(1, 5, [1, 1])) == []  # still above: no repeat
    events = det.update(chunk(2, 7, [2, 2, 1, 1]))
    assert [(e.label, e.frame, e.time_s) for e in events] == [("no", 8, 0.09),
                                                              ("yes", 10, 0.11)]
    with pytest.raises(ConfigError, match="threshold"):
        Detector(labels, threshold=1.5)
