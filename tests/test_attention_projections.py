"""The q/k/v projections of nn.MultiheadAttention as layers: views that write into the
attention's own parameters, inputs read from its query/key/value arguments, and solved exactly
as the same maps written as nn.Linear layers would be."""
from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crossdistill
from crossdistill.attention_projections import PackedProjection, packed_layers
from crossdistill.capture import all_layer_inputs, forward_order, get_module
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.config import CompressConfig
from crossdistill.finetune.weights import Masks
from crossdistill.pipeline import FewShot, compress

E, HEADS, KDIM = 16, 2, 10


class ExplicitAttention(nn.Module):
    """The same attention with its projections as nn.Linear modules (named as the proxies are)."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.heads = mha.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, E) for d in (E, mha.kdim, mha.vdim))
        self.out_proj = nn.Linear(E, E)
        with torch.no_grad():
            for i, lin in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                lin.weight.copy_(get_module(mha, ("q_proj", "k_proj", "v_proj")[i]).weight)
                lin.bias.copy_(mha.in_proj_bias[i * E : (i + 1) * E])
            self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(self, query, key, value, need_weights=False):
        b, n = query.shape[:2]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, self.heads, E // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value)))
        return self.out_proj(a.transpose(1, 2).reshape(b, n, E)), None


class Block(nn.Module):
    """Tokens → embedding → self-attention (packed in_proj_weight) or cross-attention on a
    memory of another width (q/k/v_proj_weight, key and value passed by keyword) → head."""

    def __init__(self, cross: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cross = cross
        self.embed = nn.Linear(12, E)
        if cross:
            self.memory = nn.Linear(12, KDIM)
        extra = {"kdim": KDIM, "vdim": KDIM} if cross else {}
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True, **extra)
        self.head = nn.Linear(E, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        if self.cross:
            m = torch.relu(self.memory(x[:, :4]))
            a = self.attn(h, key=m, value=m, need_weights=False)[0]
        else:
            a = self.attn(h, h, h, need_weights=False)[0]
        return self.head((h + a).mean(1))


def tokens(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 6, 12, generator=torch.Generator().manual_seed(1))


def explicit_twin(model: Block) -> Block:
    twin = Block(model.cross)
    twin.load_state_dict(model.state_dict())
    twin.attn = ExplicitAttention(model.attn)
    return twin.eval()


@pytest.mark.parametrize("cross", [False, True])
def test_projections_are_views_of_the_attention(cross):
    model = Block(cross).eval()
    x = tokens(4)
    twin = explicit_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-5, atol=1e-6)  # the proxies' slices are right
        proj = get_module(model, "attn.k_proj")
        assert isinstance(proj, PackedProjection) and proj.weight.shape == (E, KDIM if cross else E)
        proj.weight.mul_(0)  # written through the view
    param = model.attn.k_proj_weight if cross else model.attn.in_proj_weight[E : 2 * E]
    assert bool((param == 0).all())
    if not cross:
        assert bool((model.attn.in_proj_weight[:E] != 0).all())  # q's rows untouched
    assert [n for n, _ in packed_layers(model)] == ["attn.q_proj", "attn.k_proj", "attn.v_proj"]
    assert "attn.q_proj" not in dict(model.named_modules())  # the module tree is unchanged


def test_capture_reads_query_key_and_value():
    model = Block(cross=True).eval()
    x = tokens(4)
    names = ["attn.q_proj", "attn.k_proj", "attn.v_proj"]
    got = all_layer_inputs(model, names, [x])
    with torch.no_grad():
        h, m = torch.relu(model.embed(x)), torch.relu(model.memory(x[:, :4]))
    assert torch.equal(got["attn.q_proj"][0], h)
    assert torch.equal(got["attn.k_proj"][0], m) and torch.equal(got["attn.v_proj"][0], m)  # given by keyword
    order = forward_order(model, x)
    assert order.index("attn.q_proj") < order.index("attn.v_proj") < order.index("attn.out_proj") < order.index("head")


def solve(model: nn.Module, method: str, **settings) -> tuple[nn.Module, dict]:
    cfg = CompressConfig(model="block", method=method, shots=8, **settings).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        result = compress(model, FewShot(tokens(), torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)
    return result.student, {e["name"]: e for e in result.summary[method]["layers"]}


@pytest.mark.parametrize("method, settings", [("sparsity", {"sparsity": 0.5}), ("quant", {"bits": 4})])
@pytest.mark.parametrize("cross", [False, True])
def test_projections_are_solved_as_the_same_linear_layers(cross, method, settings):
    """The attention's packed projections and their twin's nn.Linear layers see the same inputs
    (query, key, value) and must come out of the same solve with the same weights."""
    model = Block(cross).eval()
    packed, entries = solve(model, method, **settings)
    plain, _ = solve(explicit_twin(model), method, **settings)
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"):
        assert entries[name]["status"] in ("pruned", "quantized")
        w, ref = get_module(packed, name).weight.detach(), get_module(plain, name).weight.detach()
        assert not torch.equal(w, get_module(model, name).weight)  # solved
        if method == "sparsity":
            assert torch.equal(w == 0, ref == 0), name  # the same weights removed
        torch.testing.assert_close(w, ref, rtol=1e-4, atol=1e-5, msg=name)
    x = tokens(8)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-4, atol=1e-5)


def test_low_rank_leaves_the_projections_and_says_why():
    model = Block().eval()
    with pytest.warns(CompressionWarning, match=r"attn\.q_proj, attn\.k_proj, attn\.v_proj \(not factorised: its weight is rows"):
        cfg = CompressConfig(model="block", method="lowrank", shots=8).validate()
        compress(model, FewShot(tokens(), torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)


def test_finetune_masks_bind_to_the_packed_parameter():
    """Masks of q/k/v are rows of one parameter: its gradient (not a view's, which has none) is
    masked, and an optimizer step keeps every pruned weight at zero."""
    student, _ = solve(Block().eval(), "sparsity", sparsity=0.5)
    masks = {n: get_module(student, n).weight.detach() != 0 for n in ("attn.q_proj", "attn.v_proj")}
    bound = Masks(student, masks)
    assert len(bound.pairs) == 1 and bound.pairs[0][0] is student.attn.in_proj_weight
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        student.train()(tokens(8)).square().sum().backward()
        bound.mask_grads()
        grad = student.attn.in_proj_weight.grad
        assert bool((grad[:E][~masks["attn.q_proj"]] == 0).all())
        assert bool((grad[E : 2 * E] != 0).any())  # k was not masked: it trains
        opt.step()
        bound.apply()
    w = student.attn.in_proj_weight.detach()
    assert bool((w[:E][~masks["attn.q_proj"]] == 0).all()) and bool((w[2 * E :][~masks["attn.v_proj"]] == 0).all())


FACTORY = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_attention_projections import Block

    def make():
        return Block()
""")


@pytest.mark.parametrize("method, settings", [("sparsity", {"sparsity": 0.5}), ("quant", {"bits": 4})])
def test_saved_student_reloads_with_its_projections(tmp_path, method, settings):
    factory = tmp_path / "blocks.py"
    factory.write_text(FACTORY.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    model = Block().eval()
    model.crossdistill_factory = f"{factory}:make"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        student, _ = crossdistill.compress(model, tokens(), labels=torch.arange(32) % 4, shots=8, method=method,
                                           show_progress=False, **settings)
    loaded = crossdistill.load(crossdistill.save(student, tmp_path / "s.safetensors"))
    x = tokens(8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), student(x))
    if method == "sparsity":
        assert set(crossdistill.compression.weight_sparsity.get_masks(loaded)) >= {"attn.q_proj", "attn.k_proj"}
    else:
        assert "attn.v_proj" in loaded.crossdistill_quant
        from safetensors import safe_open

        with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
            assert "attn.in_proj_weight" not in f.keys()  # all three parts are codes: no float copy


def test_student_inputs_of_q_k_v_cost_one_pass():
    from crossdistill.capture import StudentInputs

    model = Block(cross=True).eval()
    batches = [tokens(4), tokens(6)]
    calls = []
    model.attn.register_forward_pre_hook(lambda *a: calls.append(1))
    inputs = StudentInputs(model, batches, incremental=False)  # every layer from the images (no replay)
    got = {n: inputs.of(n) for n in ("attn.q_proj", "attn.k_proj", "attn.v_proj")}
    assert len(calls) == len(batches)  # one pass over the batches for the three
    ref = {n: v for n, v in all_layer_inputs(model, list(got), batches).items()}
    for n in got:
        assert len(got[n]) == 2 and all(torch.equal(a, b) for a, b in zip(got[n], ref[n])), n
    calls.clear()
    inputs.of("attn.out_proj")
    assert inputs.of("attn.v_proj") is not None and len(calls) == 2 * len(batches)  # asked again: captured anew


class AttentionPool(nn.Module):
    """A learned query attending over the tokens (cross-attention pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, E)
        self.query = nn.Parameter(torch.randn(1, 1, E))
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.head = nn.Linear(E, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        return self.head(self.attn(self.query.expand(x.shape[0], -1, -1), t, t, need_weights=False)[0][:, 0])


def test_a_learned_query_is_counted_and_compressed():
    """Under no_grad a view of a parameter requires grad without a grad_fn, which torch's FLOP
    counter could not take: the FLOPs are counted, and q_proj is solved on the query."""
    from crossdistill.evaluation_counts import count_flops

    torch.manual_seed(0)
    model = AttentionPool().eval()
    assert count_flops(model, (6, 12)) > 2 * 6 * 12 * E
    student, entries = solve(model, "sparsity", sparsity=0.5)
    assert entries["attn.q_proj"]["status"] == "pruned"
    assert float((get_module(student, "attn.q_proj").weight == 0).float().mean()) == 0.5
