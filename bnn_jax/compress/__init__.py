"""Post-training compression of pretrained decoder LMs (LLaMA, OPT): RTN, GPTQ, PB-LLM, DB-LLM.

``python -m bnn_jax.compress --model DIR --method pbllm_gptq --salient 0.1 --calib wikitext
--out OUT`` (see :mod:`bnn_jax.compress.__main__`). Methods (:data:`METHODS`):

* ``rtn`` / ``gptq``: the ``int_weight`` grid at ``--bits`` (2-4), by rounding or by GPTQ
  with error compensation (:func:`bnn_jax.quant.gptq_pb` with every weight on the high grid);
* ``pbllm_gptq``: PB-LLM's GPTQ-PB (salient fraction on an 8-bit grid, the rest binarized);
* ``pbllm_qat``: PB-LLM QAT (``pbllm_weight``: salient mask fixed at the start, 8-bit salient
  weights, the binary scale recomputed every step) trained on the calibration windows;
* ``dbllm``: DB-LLM (``dbllm_fdb`` initialized from the 2-bit grid, its scales learned by
  Deviation-Aware Distillation from the float model on text the float model samples).

The PTQ methods run block by block as PB-LLM's ``gptq_pb/run.py`` ``quant_sequential`` does
(lines 116-178): the inputs of every linear of block ``i`` are collected from the float block
``i`` fed with the outputs of the already-compressed blocks ``< i``; then the block is
compressed and run again to give block ``i + 1`` its inputs. Each method stores its choice
in the model as the linears' kernel quantizer and its learned arrays, so loading the output
directory (:func:`bnn_jax.compress.io.load`) rebuilds the compressed forward pass.
"""

from bnn_jax.compress.methods import METHODS, compress
from bnn_jax.compress.io import load, save

__all__ = ["METHODS", "compress", "load", "save"]
