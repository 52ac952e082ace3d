"""larq-zoo parity: our cost analysis of every larq-zoo network at 224x224x3, 1000 classes,
against the numbers larq-zoo publishes.

  PYTHONPATH=. python experiments/zoo.py   # writes results/zoo.json, then zoo.md and the
                                           # README "Model zoo" table from it

References (read from larq/zoo at commit 77c5853f, the "# ImageNet Metrics" table of each
model function's docstring, and from the larq/docs pull request 85 "Update weight and
parameter counts in documentation", which prints larq's summary of two DenseNets). The
docstring tables of QuickNet* give the counts of today's larq summary (BatchNorm scale/bias
folded into the moving statistics), as does MeliusNet22's; those of the other literature
models give every array (BatchNorm scale/bias included, Keras' count_params) and the memory of
those arrays; RealToBinaryNet's gives every array but the summary's memory ("mixed").
"""


from __future__ import annotations

import json
import pathlib
import sys

from flax import nnx

from bnn_jax import models
from bnn_jax.analysis import cost

HERE = pathlib.Path(__file__).parent
# convention -> (params key, memory key) of our totals
KEYS = {"summary": ("total_params", "memory_bytes"),
        "all_arrays": ("all_arrays", "all_arrays_memory_bytes"),
        "mixed": ("all_arrays", "memory_bytes")}
DOC = "larq/zoo@77c5853f {file} docstring"

# name: (docstring parameters, docstring memory in MB (= MiB), convention, source file)
DOCSTRING = {
    "quicknet_small": (12_655_688, 4.00, "summary", "larq_zoo/sota/quicknet.py"),
    "quicknet": (13_234_088, 4.17, "summary", "larq_zoo/sota/quicknet.py"),
    "quicknet_large": (23_342_248, 5.40, "summary", "larq_zoo/sota/quicknet.py"),
    "birealnet": (11_699_112, 4.03, "all_arrays", "larq_zoo/literature/birealnet.py"),
    "binary_resnet_e18": (11_699_368, 4.03, "all_arrays", "larq_zoo/literature/resnet_e.py"),
    "binary_densenet28": (5_150_504, 4.12, "all_arrays", "larq_zoo/literature/densenet.py"),
    "binary_densenet37": (8_734_120, 5.25, "all_arrays", "larq_zoo/literature/densenet.py"),
    "binary_densenet37_dilated": (8_734_120, 5.25, "all_arrays",
                                  "larq_zoo/literature/densenet.py"),
    "binary_densenet45": (13_939_240, 7.54, "all_arrays", "larq_zoo/literature/densenet.py"),
    "meliusnet22": (6_944_584, 3.88, "summary", "larq_zoo/literature/meliusnet.py"),
    # parameters of every array, memory of larq's summary (as the docstring's two numbers match)
    "real_to_binary_net": (11_995_624, 5.13, "mixed", "larq_zoo/literature/real_to_bin_nets.py"),
    "xnornet": (62_396_768, 22.81, "all_arrays", "larq_zoo/literature/xnornet.py"),
    "dorefanet": (62_403_912, 22.84, "all_arrays", "larq_zoo/literature/dorefanet.py"),
    "binary_alexnet": (61_859_192, 7.49, "all_arrays", "larq_zoo/literature/binary_alex_net.py"),
}

# larq summaries printed in larq/docs pull request 85 (rounded as larq prints them).
SUMMARY = {
    "binary_densenet45": dict(total_params="13.9 M", non_trainable="49.7 k",
                              size_mib=7.35, macs="6.67 B", binarized=0.9634),
    "binary_densenet37_dilated": dict(total_params="8.7 M", non_trainable="31.9 k",
                                      size_mib=5.13, macs="8.23 B", binarized=0.9450),
}


# The rest of the zoo (no larq-zoo reference): name -> (paper, input shape, classes).
OTHERS = {
    "pokebnn_0.5x": ("PokeBNN (Zhang et al. 2022)", (224, 224, 3), 1000),
    "pokebnn_1.0x": ("PokeBNN (Zhang et al. 2022)", (224, 224, 3), 1000),
    "pokebnn_2.0x": ("PokeBNN (Zhang et al. 2022)", (224, 224, 3), 1000),
    "reactnet_a": ("ReActNet (Liu et al. 2020)", (224, 224, 3), 1000),
    "bireal_resnet18": ("Bi-Real Net (Liu et al. 2018)", (224, 224, 3), 1000),
    "bireal_resnet34": ("Bi-Real Net (Liu et al. 2018)", (224, 224, 3), 1000),
    "irnet_resnet18": ("IR-Net (Qin et al. 2020)", (224, 224, 3), 1000),
    "irnet_resnet34": ("IR-Net (Qin et al. 2020)", (224, 224, 3), 1000),
    "xnor_resnet18": ("XNOR-Net (Rastegari et al. 2016)", (224, 224, 3), 1000),
    "bwn_resnet18": ("BWN (Rastegari et al. 2016)", (224, 224, 3), 1000),
    "resnet18": ("ResNet (He et al. 2016), float teacher", (224, 224, 3), 1000),
    "resnet50": ("ResNet (He et al. 2016), float teacher", (224, 224, 3), 1000),
    "resnet50_int8": ("AQT 8-bit ResNet-50 (PokeBNN's teacher)", (224, 224, 3), 1000),
    "resnet20": ("ResNet-20, ReSTE/IR-Net binary layout (ste_sign)", (32, 32, 3), 10),
    "resnet20_bireal": ("Bi-Real ResNet-20, ReSTE layout (ste_sign)", (32, 32, 3), 10),
    "resnet18_cifar": ("ResNet-18 CIFAR, ReSTE layout (ste_sign)", (32, 32, 3), 10),
    "vgg_small": ("VGG-Small, ReSTE layout (ste_sign)", (32, 32, 3), 10),
    "pvt_v2_b0": ("PVTv2 (Wang et al. 2022), float; EcoFormer's base", (224, 224, 3), 1000),
    "pvt_v2_b1": ("PVTv2 (Wang et al. 2022), float; EcoFormer's base", (224, 224, 3), 1000),
    "pvt_v2_b2": ("PVTv2 (Wang et al. 2022), float; EcoFormer's base", (224, 224, 3), 1000),
}
# The CIFAR modules default to float; the table shows them binary, as the papers train them.
BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
CIFAR = ("resnet20", "resnet20_bireal", "resnet18_cifar", "vgg_small")


def measure(name: str, shape=(224, 224, 3), classes: int = 1000) -> dict:
    """Our totals for ``name`` (built abstractly)."""
    cfg = dict(name=name, **(BINARY if name in CIFAR else {}))
    model = nnx.eval_shape(lambda: models.build(cfg, num_classes=classes, input_shape=shape,
                                                rngs=nnx.Rngs(0)))
    return cost.analyze(model, shape).totals()


def run() -> dict:
    out = {}
    for name, (params, mb, convention, src) in DOCSTRING.items():
        row = dict(reference=dict(params=params, memory_mib=mb, convention=convention,
                                  source=DOC.format(file=src)))
        if name in SUMMARY:
            row["reference"]["summary"] = {**SUMMARY[name], "source": "larq/docs pull 85"}
        if name in models.names():
            row["ours"] = measure(name)
        out[name] = row
    for name, (paper, shape, classes) in OTHERS.items():
        out[name] = dict(paper=paper, input_shape=list(shape), num_classes=classes,
                         ours=measure(name, shape, classes))
    return out


def render(results: dict) -> str:
    """The markdown table of ``results`` (the json written by :func:`run`)."""
    lines = [
        "# larq-zoo parity (224x224x3, 1000 classes)", "",
        "Written by `experiments/zoo.py` from `experiments/results/zoo.json`. `params` and "
        "`MiB` compare with the larq-zoo docstring in its convention: *summary* = larq's "
        "summary (BatchNorm scale/bias folded), *all arrays* = every array (Keras "
        "count_params), *mixed* = every array for params, the summary for memory. MACs and "
        "binarized ratio are ours; where larq/docs pull 85 printed "
        "larq's summary, its values are in the last column.", "",
        "| model | convention | params (ours) | params (larq) | MiB (ours) | MiB (larq) | "
        "MACs (ours) | binarized (ours) | ACE (ours) | larq summary | match |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        if "reference" not in row:
            continue
        ref = row["reference"]
        if "ours" not in row:
            lines.append(f"| {name} | {ref['convention']} | not built | {ref['params']:,} | - | "
                         f"{ref['memory_mib']:.2f} | - | - | - | - | no |")
            continue
        t = row["ours"]
        key, mem_key = KEYS[ref["convention"]]
        mib = t[mem_key] / 2 ** 20
        ok = t[key] == ref["params"] and round(mib, 2) == ref["memory_mib"]
        s = ref.get("summary")
        stext = "-"
        if s:
            stext = (f"{s['total_params']}, {s['size_mib']:.2f} MiB, {s['macs']} MACs, "
                     f"{s['binarized']:.4f}")
            ok = ok and (round(t["memory_bytes"] / 2 ** 20, 2) == s["size_mib"]
                         and cost._num(t["macs"]) == s["macs"]
                         and f"{t['binarized_mac_ratio']:.4f}" == f"{s['binarized']:.4f}")
        lines.append(
            f"| {name} | {ref['convention'].replace('_', ' ')} | {t[key]:,} | "
            f"{ref['params']:,} | {mib:.2f} | {ref['memory_mib']:.2f} | {cost._num(t['macs'])} | "
            f"{t['binarized_mac_ratio']:.4f} | {cost._num(t['ace'])} | {stext} | "
            f"{'yes' if ok else 'NO'} |")
    lines += ["", "ACE: PokeBNN's sum of MACs x weight bits x input bits, float operands at 16 "
              "bits (AQT's bfloat16 cost model)."]
    return "\n".join(lines) + "\n"


PAPERS = {
    "quicknet_small": "QuickNet (Bannink et al. 2021)",
    "quicknet": "QuickNet (Bannink et al. 2021)",
    "quicknet_large": "QuickNet (Bannink et al. 2021)",
    "birealnet": "Bi-Real Net (Liu et al. 2018)",
    "binary_resnet_e18": "Back to Simplicity (Bethge et al. 2019)",
    "binary_densenet28": "Back to Simplicity (Bethge et al. 2019)",
    "binary_densenet37": "Back to Simplicity (Bethge et al. 2019)",
    "binary_densenet37_dilated": "Back to Simplicity (Bethge et al. 2019)",
    "binary_densenet45": "Back to Simplicity (Bethge et al. 2019)",
    "xnornet": "XNOR-Net (Rastegari et al. 2016)", "dorefanet": "DoReFa-Net (Zhou et al. 2016)",
    "binary_alexnet": "BNN (Hubara et al. 2016)",
    "meliusnet22": "MeliusNet (Bethge et al. 2020)",
    "real_to_binary_net": "Real-to-Binary (Martinez et al. 2020)",
}


def readme_table(results: dict) -> str:
    """The README "Model zoo" table (built networks only), from the same results."""
    lines = ["| model | paper | input | params | memory | MACs | binarized | ACE |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        if "ours" not in row:
            continue
        t = row["ours"]
        paper = row.get("paper") or PAPERS[name]
        shape = "x".join(map(str, row.get("input_shape", (224, 224, 3))))
        lines.append(f"| `{name}` | {paper} | {shape} | {cost._num(t['total_params'])} | "
                     f"{cost._mem(t['memory_bytes'])} | {cost._num(t['macs'])} | "
                     f"{t['binarized_mac_ratio']:.4f} | {cost._num(t['ace'])} |")
    return "\n".join(lines)


def write_readme(results: dict) -> None:
    """Replace the table between README's model-zoo markers."""
    path = HERE.parent / "README.md"
    text = path.read_text()
    start, end = "<!-- model-zoo:start -->\n", "\n<!-- model-zoo:end -->"
    i, j = text.index(start) + len(start), text.index(end)
    path.write_text(text[:i] + readme_table(results) + text[j:])


def main() -> int:
    results = run()
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "zoo.json").write_text(json.dumps(results, indent=1) + "\n")
    saved = json.loads((HERE / "results" / "zoo.json").read_text())
    (HERE / "zoo.md").write_text(render(saved))
    write_readme(saved)
    print((HERE / "zoo.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
