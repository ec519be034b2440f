"""Text models fed token ids: the embedding turns the ids into the float inputs the layers are
solved on, so a text CNN or a transformer encoder compresses from a few sentences, saves, loads
and exports like an image model."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.errors import CrossDistillError

VOCAB = 60


class TextCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.conv1, self.conv2 = nn.Conv1d(16, 32, 3, padding=1), nn.Conv1d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).transpose(1, 2)
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(h)))).amax(-1))


class TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.position = nn.Parameter(torch.randn(1, 10, 16) * 0.1)
        self.mlp_in, self.mlp_out = nn.Linear(16, 48), nn.Linear(48, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.position
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mlp_out(torch.relu(self.mlp_in(h)))
        return self.fc(h.mean(1))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _sentences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences of 10 ids, each holding one keyword (ids 0-3, at a random place): its class."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, 10), generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    ids[torch.arange(n), torch.randint(0, 10, (n,), generator=gen)] = y
    return ids, y


def _trained(model: nn.Module) -> nn.Module:
    ids, y = _sentences(400, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("make", [TextCNN, TextEncoder])
def test_a_text_model_is_pruned_from_a_few_sentences_better_than_by_pruning_alone(make):
    teacher = _trained(make())
    train, labels = _sentences(200, 1)
    test, test_labels = _sentences(200, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left whole are named in a warning
        student, report = crossdistill.compress(teacher, train, labels=labels, shots=5, keep=0.5,
                                                eval_data=(test, test_labels), show_progress=False)
        _, pruned_only = crossdistill.compress(teacher, train, labels=labels, shots=5, keep=0.5, solver="prune-only",
                                               eval_data=(test, test_labels), show_progress=False)
    assert report["teacher"]["top1"] > 80.0  # the teacher learned the task
    assert report["student"]["flops"] < report["teacher"]["flops"] and report["channel_groups"]["pruned"]
    assert report["agreement"]["output_error"] < pruned_only["agreement"]["output_error"]
    assert student(test).shape == (200, 4)


def test_a_text_model_saves_loads_and_exports_with_token_inputs(tmp_path):
    pytest.importorskip("onnxruntime")
    from crossdistill.export import export_model, verification_inputs
    from crossdistill.models.user import info_of

    teacher = _trained(TextCNN())
    train, labels = _sentences(80, 1)
    student, _ = crossdistill.compress(teacher, train, labels=labels, shots=4, keep=0.5, show_progress=False)
    student.crossdistill_factory = f"{__file__}:TextCNN"
    loaded = crossdistill.load(crossdistill.save(student, tmp_path / "text.safetensors"))
    assert info_of(loaded).input_dtype == "int64" and loaded.conv1.out_channels == student.conv1.out_channels
    assert torch.equal(loaded(train), student(train))
    ids, desc = verification_inputs(loaded)
    assert ids.dtype == torch.int64 and int(ids.max()) < VOCAB and "random" in desc
    for fmt in ("onnx", "torchscript"):
        assert export_model(loaded, tmp_path / f"text.{fmt}", fmt, ids[:8]).max_abs_diff <= 1e-4
    # Max over time takes any length: the ONNX file's length axis is free (checked at 1.5x).
    import onnxruntime as ort

    res = export_model(loaded, tmp_path / "free.onnx", "onnx", ids[:8])
    assert res.free_axes == ("length",)
    longer = torch.cat([train[:3], train[:3]], 1)
    got = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": longer.numpy()})[0]
    with torch.no_grad():
        assert float((torch.from_numpy(got) - loaded(longer)).abs().max()) < 1e-4


def test_token_ids_are_not_blended_or_viewed():
    teacher = _trained(TextCNN())
    train, labels = _sentences(80, 1)
    _, report = crossdistill.compress(teacher, train, labels=labels, shots=4, method="quant", bits=4,
                                      finetune_epochs=1, show_progress=False)
    assert report["finetune"]["augment"] == "off: token ids have no random views"
    with pytest.raises(CrossDistillError, match="token ids cannot be blended"):
        crossdistill.compress(teacher, train, labels=labels, shots=4, method="quant", bits=4, finetune_epochs=1,
                              finetune_mixup=0.2, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"views need images \(N, C, H, W\)"):
        crossdistill.compress(teacher, train, labels=labels, shots=4, views=2, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"negative values \(-1\)"):
        crossdistill.compress(teacher, train - 1, labels=labels, shots=4, show_progress=False)


class TiedLM(nn.Module):
    """A tiny language model whose output layer is its embedding table (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.lm_head = nn.Linear(16, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.lm_head(h + self.fc2(torch.relu(self.fc1(h))))


@pytest.mark.parametrize("settings", [{"method": "quant", "bits": 4}, {"method": "sparsity", "prune_last": True},
                                      {"method": "lowrank", "lowrank_last": True}, {"keep": 0.5}])
def test_an_output_layer_tied_to_the_embedding_is_left_as_it_is(settings):
    teacher = TiedLM().eval()
    table = teacher.embed.weight.detach().clone()
    ids, _ = _sentences(40, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student, report = crossdistill.compress(teacher, ids, n_samples=20, output_kind="values", eval_data=ids[:8],
                                                show_progress=False, **settings)
    assert torch.equal(student.embed.weight, table) and student.lm_head.weight is student.embed.weight
    method = settings.get("method", "channels")
    if method != "channels":
        reasons = {row["name"]: row.get("reason") for row in report[method]["layers"]}
        assert reasons["lm_head"].startswith("its weight is tied to embed.weight")
    assert report["agreement"]["output_error"] < 0.1


class MaskedEncoder(nn.Module):
    """BERT-style: padding (id 0) masked in attention; a sentence of padding alone fails in torch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 1,
                                             enable_nested_tensor=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(ids), src_key_padding_mask=ids == 0)[:, 0])


def test_a_padding_masked_encoder_is_checked_on_real_sentences_and_bad_ids_are_named(tmp_path):
    teacher = MaskedEncoder().eval()
    ids, labels = _sentences(60, 1)
    ids[:, 8:] = 0  # padded
    student, report = crossdistill.compress(teacher, ids, labels=labels, shots=4, keep=0.5, eval_data=(ids, labels),
                                            show_progress=False)
    assert report["student"]["flops"] < report["teacher"]["flops"] and report["channel_groups"]["pruned"]
    student.crossdistill_factory = f"{__file__}:MaskedEncoder"
    loaded = crossdistill.load(crossdistill.save(student, tmp_path / "m.safetensors"))  # re-slimmed on ids
    assert torch.equal(loaded(ids), student(ids))
    bad = ids.clone()
    bad[0, 1] = VOCAB + 5
    with pytest.raises(CrossDistillError, match=rf"training data: token id {VOCAB + 5} is beyond the model's vocabulary"):
        crossdistill.compress(teacher, bad, labels=labels, shots=4, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"\(pad or cut the token ids to one length\)"):
        crossdistill.compress(teacher, ids, labels=labels, shots=4, eval_data=(ids[:, :5], labels),
                              show_progress=False)
    ragged = [(ids[i, : 6 + i % 3], labels[i]) for i in range(12)]
    with pytest.raises(CrossDistillError, match="samples have different shapes .*pad or cut sequences"):
        crossdistill.compress(teacher, ragged, shots=2, show_progress=False)


class Tagger(nn.Module):
    """Token classification: (batch, L, C) logits, one class per token, classes last."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.mlp_in, self.mlp_out = nn.Linear(16, 48), nn.Linear(48, 16)
        self.tag = nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.tag(h + self.mlp_out(torch.relu(self.mlp_in(h))))


def test_per_token_logits_are_read_classes_last_and_scored_per_token():
    from crossdistill.evaluation_agreement import scores

    teacher = Tagger().eval()
    ids, _ = _sentences(80, 1)
    with torch.no_grad():
        tags = teacher(ids).argmax(-1)  # (80, 10)
    tags[:, -1] = -100  # Hugging Face's ignored token: not scored
    student, report = crossdistill.compress(teacher, ids, n_samples=40, keep=0.5, eval_data=(ids, tags),
                                            finetune_epochs=2, finetune_mode="kd", show_progress=False)
    assert report["predictions"]["kind"] == "sequence" and report["teacher"]["top1"] == 100.0
    assert report["student"]["top1"] == pytest.approx(scores(student, ids, tags, kind="sequence")["top1"])
    assert report["finetune"]["after"]["kd"] <= report["finetune"]["before"]["kd"] * 1.05
    with torch.no_grad():  # agreement per token, not over positions
        same = (student(ids).argmax(-1) == teacher(ids).argmax(-1)).float().mean() * 100
    assert report["agreement"]["top1_agreement"] == pytest.approx(float(same))
    assert "miou" in report["student"]


def test_recurrent_layers_are_counted_and_quantized_and_an_exporter_refusal_is_one_message(tmp_path):
    from crossdistill.evaluation_counts import count_flops
    from crossdistill.export import export_model

    class Recurrent(nn.Module):
        def __init__(self, cell: type[nn.RNNBase]) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8)
            self.rnn = cell(8, 16, batch_first=True, num_layers=2, bidirectional=True)
            self.fc = nn.Linear(32, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(self.embed(ids))[0][:, -1])

    gates = {nn.LSTM: 4, nn.GRU: 3}
    for cell, g in gates.items():
        # Per direction and layer: 2 FLOPs per MAC, L steps, g·H gate rows over input and hidden.
        expected = 2 * 10 * g * 16 * ((8 + 16) + (32 + 16)) * 2 + 2 * 32 * 4
        assert count_flops(Recurrent(cell).eval(), (10,), "int64") == expected
    teacher = Recurrent(nn.LSTM).eval()
    ids, labels = _sentences(40, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = crossdistill.compress(teacher, ids, labels=labels, shots=4, method="quant", bits=8,
                                          show_progress=False)
    status = {row["name"]: row["status"] for row in report["quant"]["layers"]}
    # On the embedded tokens, every step a sample (tests/test_recurrent_weights.py).
    assert status["rnn.ih_l0"] == status["rnn.hh_l1_reverse"] == "quantized" and "rnn.weight_ih_l0" not in status

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag, self.fc = nn.EmbeddingBag(VOCAB, 8, padding_idx=0), nn.Linear(8, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.bag(ids))

    with pytest.raises(CrossDistillError, match=r"the ONNX exporter cannot export this model \(RuntimeError: "
                                                r"embedding_bag with padding_idx\); nothing was written"):
        export_model(Bag().eval(), tmp_path / "bag.onnx", "onnx", ids[:4])
    assert not (tmp_path / "bag.onnx").exists()


def test_an_attention_model_whose_onnx_graph_fixes_the_length_says_so(tmp_path, capfd):
    from crossdistill.export import export_model

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.attn, self.fc = nn.Embedding(VOCAB, 16), nn.MultiheadAttention(16, 4, batch_first=True), \
                nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.embed(ids)
            return self.fc((h + self.attn(h, h, h, need_weights=False)[0]).mean(1))

    ids, _ = _sentences(8, 1)
    res = export_model(Attention().eval(), tmp_path / "a.onnx", "onnx", ids)
    assert res.free_axes == () and res.note.startswith("size fixed: the model takes other sizes")
    assert "onnxruntime" not in capfd.readouterr().err  # its failed check at 1.5x the length logs nothing


def test_a_steep_uniform_keep_forced_by_a_flops_target_is_named():
    # With the attention's heads whole, only the MLP hidden units of the encoder can be pruned:
    # 60 % of the FLOPs leaves them a quarter.
    teacher = TextEncoder().eval()
    ids, labels = _sentences(60, 1)
    with pytest.warns(UserWarning, match=r"reaching 0.6 of the FLOPs keeps only 2\d\.\d% of every prunable channel "
                                         r"group's units \(1 group; the rest of the model is left whole\)"):
        _, report = crossdistill.compress(teacher, ids, labels=labels, shots=4, flops=0.6, prune_heads=False,
                                          show_progress=False)
    assert report["student"]["flops"] <= 0.6 * report["teacher"]["flops"]
    # Its heads share the cut (2 groups), so the same target keeps more of each.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _, report = crossdistill.compress(teacher, ids, labels=labels, shots=4, flops=0.6, show_progress=False)
    assert report["student"]["flops"] <= 0.6 * report["teacher"]["flops"]
    pruned = {g.get("heads_of", "mlp"): (g["width"], g["kept"]) for g in report["channel_groups"]["pruned"]}
    assert set(pruned) == {"attn", "mlp"} and pruned["attn"][0] == 4 and pruned["mlp"][0] == 48


def test_the_command_line_refuses_a_token_id_model_with_the_way_out(tmp_path, capsys):
    """`crossdistill evaluate` on a token-id student asked for pixel --mean/--std, then counted the
    sequence length as channels; it now says the ids are the Python API's."""
    import numpy as np

    from crossdistill.cli.main import main

    teacher = _trained(TextCNN())
    train, labels = _sentences(80, 1)
    student, _ = crossdistill.compress(teacher, train, labels=labels, shots=4, keep=0.5, show_progress=False)
    student.crossdistill_factory = f"{__file__}:TextCNN"
    path = crossdistill.save(student, tmp_path / "text.safetensors")
    np.savez(tmp_path / "ids.npz", x=train.numpy(), y=labels.numpy())
    assert main(["evaluate", "--weights", str(path), "--eval-data", str(tmp_path / "ids.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "takes token ids, which the command line does not read" in err and "--mean" not in err


def test_float_ids_are_told_to_be_integers_not_given_image_advice():
    teacher = _trained(TextCNN())
    train, labels = _sentences(40, 1)
    with pytest.raises(CrossDistillError, match=r"its embedding takes token ids: give them as integers") as err:
        crossdistill.compress(teacher, train.float(), labels=labels, shots=4, method="quant", bits=8,
                              show_progress=False)
    assert "(N, C, H, W)" not in str(err.value)
