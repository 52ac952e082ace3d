"""8-bit ResNet-50 (AQT quantizers on every conv and the dense), PokeBNN's teacher."""

from bnn_jax.models import resnet_imagenet
from bnn_jax.models.blocks import variant

Model = variant(resnet_imagenet.Model, "resnet50_int8", __doc__, depth=50, style="float",
                input_quantizer=dict(name="aqt", bits=8, bound="mean_of_max"),
                kernel_quantizer=dict(name="aqt", bits=8, per_channel=True))
