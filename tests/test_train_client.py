"""aal_core.client.train with real PyTorch (CPU, one thread): the sampler keeps
the math, the knobs change at the safe point, checkpoints are whole."""
import os

import pytest

torch = pytest.importorskip("torch")

from aal_core.client.train import (GovernedTraining, atomic_checkpoint, load_checkpoint,  # noqa: E402
                                   set_activation_checkpointing)

from helpers import cleanup, start_daemon, wait_for  # noqa: E402
from train_helpers import EAGER, ledger_data  # noqa: E402

torch.set_num_threads(1)


def _model(seed=0):
    torch.manual_seed(seed)
    blocks = [torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)) for _ in range(2)]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(8, 1))


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return x, x.sum(1, keepdim=True).tanh()


def _grads(gov, model, x, y, epoch=0):
    micro_batches = next(iter(gov.steps(epoch)))
    model.zero_grad()
    for idx in micro_batches:
        gov.backward(torch.nn.functional.mse_loss(model(x[idx]), y[idx]), len(idx))
    return [p.grad.clone() for p in model.parameters()], torch.cat(micro_batches)


def test_smaller_micro_batches_give_the_same_step():
    x, y = _data()
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    full = GovernedTraining("t", m, opt, dataset_size=64, micro_batch=32, grad_accum=1, connect=False)
    quarter = GovernedTraining("t", m, opt, dataset_size=64, micro_batch=8, grad_accum=4, connect=False)
    g1, idx1 = _grads(full, m, x, y)
    g2, idx2 = _grads(quarter, m, x, y)
    assert torch.equal(idx1, idx2)                      # the same samples, in the same order
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert len(list(full.steps(0))) == 2 and len(list(quarter.steps(0))) == 2


def test_activation_checkpointing_toggles_innermost_blocks_and_keeps_gradients():
    x, y = _data()
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    gov = GovernedTraining("t", m, opt, dataset_size=64, micro_batch=16, grad_accum=2, connect=False)
    plain, _ = _grads(gov, m, x, y)
    assert set_activation_checkpointing(m, True) == 2    # the two blocks, not the outer Sequential
    assert set_activation_checkpointing(m, True) == 0
    ck, _ = _grads(gov, m, x, y)
    for a, b in zip(plain, ck):
        torch.testing.assert_close(a, b)
    assert set_activation_checkpointing(m, False) == 2
    assert all("forward" not in s.__dict__ for s in m.modules())


def test_checkpoint_is_atomic_and_restores_model_optimizer_step_and_rng(tmp_path):
    x, y = _data()
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    torch.nn.functional.mse_loss(m(x), y).backward()
    opt.step()
    path = str(tmp_path / "run.pt")
    atomic_checkpoint(path, m, opt, step=7, epoch=1, extra={"k": 1})
    assert os.listdir(tmp_path) == ["run.pt"]           # no temporary left behind
    want = torch.rand(3)
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    m2 = _model(seed=5)
    opt2 = torch.optim.Adam(m2.parameters(), lr=0.01)
    meta = load_checkpoint(path, m2, opt2)
    assert meta == {"step": 7, "epoch": 1, "extra": {"k": 1}}
    for k, v in m2.state_dict().items():
        assert torch.equal(v, saved[k])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), want)             # the RNG as it was at the checkpoint


def test_a_governed_loop_applies_the_daemons_command_between_steps(tmp_path):
    d = start_daemon(config=EAGER)
    try:
        x, y = _data(256)
        m = _model()
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        gov = GovernedTraining("loop", m, opt, dataset_size=256, micro_batch=32, grad_accum=2,
                               checkpoint_dir=str(tmp_path), report_every=1, socket_path=d.socket)
        assert gov.channel.wait_connected(10)
        sizes = []
        for epoch in range(40):
            for micro_batches in gov.steps(epoch):
                sizes.append(len(micro_batches[0]))
                opt.zero_grad()
                for idx in micro_batches:
                    gov.backward(torch.nn.functional.mse_loss(m(x[idx]), y[idx]), len(idx))
                opt.step()
                gov.step_done(0.0)
            if gov.applied:
                break
        assert gov.applied and gov.applied[0]["type"] == "batch_adjustment"
        assert (gov.micro_batch, gov.grad_accum) == (16, 4) and gov.effective_batch == 64
        step = gov.applied[0]["step"]
        assert sizes[step - 1] == 32                      # the step that was running finished as it was
        gov.close()
        st = wait_for(lambda: (r := d.call("train.status", {"run_id": "loop"})["runs"][0])["applied"] and r,
                      what="the field report")
        assert st["applied"][0]["status"] == "APPLIED" and st["knobs"]["micro_batch_size"] == 16
        rep = wait_for(lambda: ledger_data(d, "train.field_report"), what="the report ledgered")[0]["report"]
        assert rep["metrics_before"]["micro_batch"] == 32 and rep["metrics_after"]["micro_batch"] == 16
    finally:
        cleanup(d)
