"""Paper recipes against their reference code: schedules, loss terms and steps from epochs."""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import quant
from bnn_jax.train import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def get_config(name, arg=""):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ------------------------------------------------------------------------------- IR-Net --

def log_up_reference(t_min, t_max, epoch, epochs):
    """htqin/IR-Net trainer.py: Log_UP, then k = 1/t if t < 1 else 1 (NumPy re-statement)."""
    kmin, kmax = math.log(t_min) / math.log(10), math.log(t_max) / math.log(10)
    t = math.pow(10, kmin + (kmax - kmin) / epochs * epoch)
    return t, (1 / t if t < 1 else 1.0)


@pytest.mark.parametrize("model,t_min,epochs,batch,size", [
    ("resnet20", 1e-3, 400, 128, 50_000), ("vgg_small", 0.1, 300, 128, 50_000),
    ("irnet_resnet18", 0.1, 100, 256, 1_281_167)])
def test_irnet_t_k_follow_log_up_per_epoch(model, t_min, epochs, batch, size):
    c = get_config("irnet", f"model={model}")
    config_lib.validate(c)
    per_epoch = math.ceil(size / batch)
    assert c.total_steps == epochs * per_epoch
    q = quant.get(c.model.input_quantizer)
    spec = c.schedules.input.progress.to_dict()
    grad = jax.jit(lambda x, step: jax.grad(lambda v: jnp.sum(q(v, progress=config_lib.
                   schedule_value(spec, step.astype(jnp.float32) / c.total_steps))))(x))
    x = jnp.asarray([-0.5, 0.0, 0.3, 2.0], jnp.float32)
    # the first and last step of a few epochs, as the loop numbers them (0-based step)
    for e in (0, 1, epochs // 3, epochs // 2 + 1, epochs - 1):
        for step in (e * per_epoch, (e + 1) * per_epoch - 1):
            t, k = log_up_reference(t_min, 10.0, e, epochs)
            want = k * t * (1 - np.tanh(np.asarray(x, np.float64) * t) ** 2)
            np.testing.assert_allclose(grad(x, jnp.int32(step)), want, rtol=2e-5, atol=1e-5,
                                       err_msg=f"epoch {e} step {step}")
    # the weight quantizer gets the same (t, k)
    w = quant.get(c.model.kernel_quantizer)
    assert w.params["t_min"] == t_min and w.params["epochs"] == epochs


def test_irnet_fixed_t_k_without_progress():
    q = quant.get("irnet_ede")
    g = jax.grad(lambda v: jnp.sum(q(v, t=2.0, k=0.5)))(jnp.asarray([0.25]))
    np.testing.assert_allclose(g, 0.5 * 2.0 * (1 - np.tanh(0.5) ** 2), rtol=1e-6)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        quant.get("irnet_ede", epochs=2.5)


# ------------------------------------------------------------------------- PokeBNN / AQT --

def aqt_piecewise_reference(step, base, knee_steps, knee_lr, endlr, total_steps):
    """google/aqt imagenet/train.py create_learning_rate_fn, scheduler 'piecewise' (NumPy)."""
    k1 = step / knee_steps
    lr1 = k1 * knee_lr + (1 - k1) * base
    k2 = (step - knee_steps) / (total_steps - knee_steps)
    lr2 = k2 * endlr + (1 - k2) * knee_lr
    return np.where(step >= knee_steps, lr2, lr1)


def test_piecewise_schedule_equals_aqt():
    from bnn_jax.train import optimizers

    steps = np.array([0, 1, 99, 700, 749, 750, 751, 790, 799, 800], np.float64)
    fn = optimizers.schedule(dict(learning_rate=0.5, schedule="piecewise", knee_steps=750,
                                  knee_factor=0.2, end_factor=0.02), 800)
    np.testing.assert_allclose(np.asarray(jax.vmap(fn)(jnp.asarray(steps))),
                               aqt_piecewise_reference(steps, 0.5, 750, 0.1, 0.01, 800),
                               rtol=1e-6, atol=1e-9)


def test_pokebnn_recipe_schedule_and_start_steps():
    from bnn_jax.train import optimizers

    c = get_config("pokebnn")
    config_lib.validate(c)
    per_epoch = 1_281_167 // 1024
    assert c.total_steps == 800 * per_epoch and c.optimizer.knee_steps == 750 * per_epoch
    assert c.optimizer.learning_rate == pytest.approx(2e-5 * 1024 / 256)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay) == (0.9, 0.99, 5e-5)
    lr = optimizers.schedule(c.optimizer.to_dict(), c.total_steps)
    steps = np.array([0, 5000, 750 * per_epoch - 1, 750 * per_epoch, c.total_steps - 1.0])
    np.testing.assert_allclose(np.asarray(jax.vmap(lr)(jnp.asarray(steps))),
                               aqt_piecewise_reference(steps, 8e-5, 750 * per_epoch, 0.0, 0.0,
                                                       c.total_steps), rtol=1e-5, atol=1e-10)
    # weights from epoch 50 (AQT compares weight_quant_start_step with step // steps_per_epoch),
    # mean-of-max bounds from step 7500
    assert c.model.weight_quant_start * c.total_steps == 50 * per_epoch
    assert c.model.act_bound_start * c.total_steps == pytest.approx(7500)
    assert "progress" in c.schedules.input and "progress" in c.schedules.kernel


def test_aqt_start_leaves_early_training_unquantized():
    q = quant.get("aqt", bits=4, bound="max", start=0.25)
    x = jnp.linspace(-1.0, 1.0, 9)
    quantized = quant.get("aqt", bits=4, bound="max")(x)
    assert not np.allclose(quantized, x)
    np.testing.assert_array_equal(q(x, progress=jnp.float32(0.2)), x)
    np.testing.assert_array_equal(q(x, progress=jnp.float32(0.25)), quantized)
    np.testing.assert_array_equal(q(x), quantized)  # no progress fed: always quantized
    g = jax.grad(lambda v: jnp.sum(q(v, progress=jnp.float32(0.1)) ** 2))(x)
    np.testing.assert_allclose(g, 2 * x)  # the identity before the start


def _quantized_layers(model):
    from flax import nnx

    from bnn_jax.nn import QuantConv, QuantLinear

    return [(p, n) for p, n in nnx.iter_graph(model) if isinstance(n, (QuantConv, QuantLinear))]


def test_pokebnn_layers_carry_the_start_fractions():
    from flax import nnx

    from bnn_jax import models

    m = nnx.eval_shape(lambda: models.build(
        dict(name="pokebnn", filter_multiplier=0.125, weight_quant_start=0.5,
             act_bound_start=0.25), num_classes=10, input_shape=(32, 32, 3), rngs=nnx.Rngs(0)))
    layers = _quantized_layers(m)
    assert len(layers) > 16 * 3
    for path, layer in layers:
        assert layer.kernel_quantizer.params["start"] == 0.5, path
        a = layer.input_quantizer.params
        assert a["start"] == (0.25 if a["bound"] == "mean_of_max" else 0.0), path
    with pytest.raises(ValueError, match="act_bound_start must be a fraction"):
        models.build(dict(name="pokebnn", act_bound_start=2), num_classes=10,
                     input_shape=(32, 32, 3), rngs=nnx.Rngs(0))


def test_aqt_resnet50_first_and_last_layers_at_8_bits():
    from flax import nnx

    from bnn_jax import models

    c = get_config("aqt_resnet50")
    config_lib.validate(c)
    assert c.total_steps == 250 * (1_281_167 // 256)
    m = nnx.eval_shape(lambda: models.build(c.model, num_classes=1000, input_shape=(224, 224, 3),
                                            rngs=nnx.Rngs(0)))
    bits = {"/".join(map(str, p)): (n.kernel_quantizer.bits, n.input_quantizer.bits)
            for p, n in _quantized_layers(m)}
    assert bits.pop("stem") == (8, 8) and bits.pop("head") == (8, 8)
    assert len(bits) == 52 and set(bits.values()) == {(4, 4)}  # 48 + 4 projection convs
    with pytest.raises(ValueError, match="first_last takes"):
        models.build(dict(c.model, first_last=dict(bits=8)), num_classes=10,
                     input_shape=(32, 32, 3), rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------- Real-to-Binary --

def larq_attention_reference(student, teacher):
    """larq-zoo AttentionMatchingLossLayer (NumPy): Q = mean_c(A^2) per example, over its max;
    mean over positions of (Qs - Qt)^2, then over examples and volumes."""
    losses = []
    for s, t in zip(student, teacher):
        qs, qt = [(np.mean(np.square(np.asarray(a, np.float64)), -1).reshape(a.shape[0], -1))
                  for a in (s, t)]
        qs, qt = qs / qs.max(-1, keepdims=True), qt / qt.max(-1, keepdims=True)
        losses.append(np.mean((qs - qt) ** 2, axis=-1))
    return np.mean(np.stack(losses, -1))


def test_attention_matching_term_equals_larq_zoo():
    from bnn_jax.train import distill

    rng = np.random.default_rng(1)
    s = [rng.standard_normal((2, 4, 4, 8)).astype(np.float32),
         rng.standard_normal((2, 2, 2, 16)).astype(np.float32)]
    t = [rng.standard_normal((2, 4, 4, 3)).astype(np.float32),  # channels may differ
         rng.standard_normal((2, 2, 2, 5)).astype(np.float32)]
    got = distill.attention_matching_loss([jnp.asarray(a) for a in s], [jnp.asarray(a) for a in t])
    assert float(got) == pytest.approx(larq_attention_reference(s, t), rel=1e-5)
    # the teacher's volumes are stop-gradient
    g = jax.grad(lambda v: distill.attention_matching_loss([jnp.asarray(s[0])], [v]))(
        jnp.asarray(t[0]))
    assert not np.any(np.asarray(g))


@pytest.mark.parametrize("stage,attention,output", [(1, 30.0, 3.0), (2, 30.0, 3.0),
                                                     (3, None, 0.8)])
def test_real_to_binary_stages(stage, attention, output):
    c = get_config("real_to_binary", f"stage={stage}")
    config_lib.validate(c)
    terms = {t["name"]: t for t in c.kd.terms}
    assert terms.get("attention", {}).get("weight") == attention
    assert terms["distribution"]["weight"] == output and c.kd.task_weight == 1.0
    assert c.total_steps == 75 * math.ceil(1_281_167 / 256)
    assert (c.model.input_quantizer, c.model.kernel_quantizer) == {
        1: (None, None), 2: ("ste_sign", None), 3: ("ste_sign", "ste_sign")}[stage]
    assert c.init_from == ("runs/r2b_stage2" if stage == 3 else "")


@pytest.mark.slow  # builds a ResNet-18 teacher and runs both networks
def test_real_to_binary_attention_matching_between_student_and_resnet18():
    from flax import nnx

    from bnn_jax import models
    from bnn_jax.train import distill

    c = get_config("real_to_binary", "stage=1")
    rngs = nnx.Rngs(0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    student = models.build(dict(c.model, filters=8), num_classes=10, input_shape=(32, 32, 3),
                           rngs=rngs)
    teacher = models.build(c.kd.teacher_model, num_classes=10, input_shape=(32, 32, 3),
                           rngs=rngs)

    def features(m):
        m.eval()
        out, inter = nnx.capture(m, nnx.Intermediate)(x)
        return out, distill.flat_features(nnx.to_pure_dict(inter))

    s_out, s_feats = features(student)
    t_out, t_feats = features(teacher)
    assert sum(k.startswith("block_out/") for k in s_feats) == 8  # larq-zoo's blocks 2..9
    d = distill.Distiller(c.kd, list(s_feats), list(t_feats))
    d.check_shapes(s_out, t_out, s_feats, t_feats)
    pairs = d.pairs[[t["name"] for t in d.terms].index("attention")]
    assert [a for a, _ in pairs] == [f"block_out/{i}" for i in range(8)]
    got = distill.attention_matching_loss([s_feats[a] for a, _ in pairs],
                                          [t_feats[b] for _, b in pairs])
    want = larq_attention_reference([s_feats[a] for a, _ in pairs],
                                    [t_feats[b] for _, b in pairs])
    assert want > 1e-4 and float(got) == pytest.approx(want, rel=1e-5)
    # the composed loss: task + 3 x distribution + 30 x attention
    dist = distill.LOGIT_TERMS["distribution"][1](s_out, t_out, None)
    total = d(jnp.float32(1.5), s_out, t_out, None, s_feats, t_feats)
    assert float(total) == pytest.approx(1.5 + 3 * float(dist) + 30 * want, rel=1e-5)
    # mismatched positions are a clear error
    bad = dict(t_feats, **{pairs[0][1]: jnp.zeros((2, 3, 3, 64))})
    with pytest.raises(ValueError, match="same N, H, W"):
        d.check_shapes(s_out, t_out, s_feats, bad)


# -------------------------------------------------------------------------------- BiPer --

@pytest.mark.parametrize("stage,tau,lr,wd,epochs", [(1, 0.037, 0.021, 0.0016, 600),
                                                    (2, 0.0468, 0.0037, 0.00016, 300)])
def test_biper_cifar_loss_adds_the_tau_regularizer(stage, tau, lr, wd, epochs):
    from flax import nnx

    from bnn_jax import models, tasks

    c = get_config("biper", f"stage={stage}")
    config_lib.validate(c)
    per_epoch = math.ceil(50_000 / 256)
    assert c.total_steps == epochs * per_epoch and c.optimizer.warmup_steps == 5 * per_epoch
    assert (c.optimizer.learning_rate, c.optimizer.weight_decay) == (lr, wd)
    model = models.build(dict(c.model, name="resnet20", width=2), num_classes=10,
                         input_shape=(8, 8, 3), rngs=nnx.Rngs(0))
    task = tasks.build(c.task, spec=dict(num_classes=10, input_shape=(8, 8, 3)), config=c)
    rng = np.random.default_rng(0)
    batch = dict(image=rng.standard_normal((2, 8, 8, 3)).astype(np.float32),
                 label=np.array([1, 7], np.int32))
    args, kwargs = task.inputs(batch)
    out = model(*args, **kwargs)
    loss, aux = task.loss(out, batch)
    # NumPy: the binarized convs are the 18 inner convs (stem float), each tau mean(sin^2(wW))
    kernels = [np.asarray(n.kernel[...], np.float64) for _, n in nnx.iter_graph(model)
               if getattr(n, "kernel_quantizer", None) is not None and hasattr(n, "kernel")]
    assert len(kernels) == 18
    reg = sum(tau * np.mean(0.5 - 0.5 * np.cos(2 * 20.0 * w)) for w in kernels)
    logits = np.asarray(model(batch["image"]), np.float64)
    ce = np.mean(np.log(np.exp(logits).sum(-1)) - logits[[0, 1], batch["label"]])
    assert float(aux["regularizer"]) == pytest.approx(reg, rel=1e-5) and reg > 1e-3
    assert float(loss) == pytest.approx(ce + reg, rel=1e-5)
    # eval metrics and distillation read the logits alone
    assert task.eval_metrics(out, dict(batch, mask=np.ones(2)))["top1"].shape == (2,)


def test_weight_regularizer_field_is_checked():
    from flax import nnx

    from bnn_jax import models, tasks

    with pytest.raises(ValueError, match="weight_regularizer must be None or"):
        models.build(dict(name="resnet20", weight_regularizer=dict(name="l2")), num_classes=10,
                     input_shape=(8, 8, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model_regularizer must be True or False"):
        tasks.validate(dict(name="classification", model_regularizer="yes"))


# ------------------------------------------------------- steps from epochs, tfds fail-fast --

IMAGENET, CIFAR10 = 1_281_167, 50_000
# (config, argument, the paper recipe's epochs and batch, training-set size)
EPOCH_RECIPES = [
    ("reste", "model=resnet20", 1000, 256, CIFAR10), ("reste", "model=vgg_small", 1000, 256,
                                                      CIFAR10),
    ("reste", "model=resnet18_cifar", 2000, 96, CIFAR10),
    ("reste", "model=resnet18", 250, 750, IMAGENET), ("bireal", "", 256, 256, IMAGENET),
    ("xnor", "", 100, 256, IMAGENET), ("reactnet", "", 256, 256, IMAGENET),
    ("quicknet", "", 600, 2048, IMAGENET), ("teachers", "", 90, 256, IMAGENET),
    ("biper", "", 600, 256, CIFAR10), ("biper", "stage=2", 300, 256, CIFAR10),
    ("irnet", "", 400, 128, CIFAR10), ("irnet", "model=irnet_resnet34", 100, 256, IMAGENET),
    ("real_to_binary", "", 75, 256, IMAGENET)]


@pytest.mark.parametrize("name,arg,epochs,batch,size", EPOCH_RECIPES,
                         ids=[f"{n}:{a}" for n, a, *_ in EPOCH_RECIPES])
def test_epochs_become_steps_from_the_dataset_size(name, arg, epochs, batch, size):
    c = get_config(name, arg)
    assert c.data.batch_size == batch
    assert c.total_steps == epochs * math.ceil(size / batch)


@pytest.mark.parametrize("name,arg,dataset", [("irnet", "", "cifar10"),
                                              ("pokebnn", "", "imagenet2012"),
                                              ("aqt_resnet50", "", "imagenet2012")])
def test_full_recipes_fail_fast_without_the_prepared_dataset(name, arg, dataset, tmp_path):
    from bnn_jax import data

    c = get_config(name, arg)
    assert c.data.name == dataset
    c.data.data_dir = str(tmp_path / "empty")
    with pytest.raises(ValueError, match=rf"not prepared .*tfds build {dataset} --data_dir"):
        data.build(c.data)
