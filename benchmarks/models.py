"""Whole networks: a CIFAR ResNet-20 and a ResNet-50-shaped network, every Conv2D/Dense approximate.

Prints, per network: predict at each batch size and one epoch of fit (images/s, effective G LUT-MAC/s)
for the approximate model beside the same plain Keras float32 model in the same run, then a per-layer
table (each approximate layer alone on its input shape: time, G LUT-MAC/s, the float layer's time).

    python benchmarks/models.py [--nets resnet20,resnet50] [--images 2000] [--batches 128,1000]
                                [--fit] [--table PATH] [--device /CPU:0] [--torch_baseline]

On a GPU machine with the tf-gpu stand-ins (no cuDNN), the float Keras model cannot run on the GPU:
--torch_baseline times the same float32 network in PyTorch instead (benchmark-only baseline, TF32
off), and --nofloat_keras skips the Keras float model there.
"""

import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_approx as ta  # noqa: E402

NETS = flags.DEFINE_list("nets", ["resnet20"], "networks: resnet20 (32x32x3), resnet50 (224x224x3)")
IMAGES = flags.DEFINE_integer("images", 2000, "images per predict (the issue's figures: 10000 / 1000)")
BATCHES = flags.DEFINE_list("batches", ["128", "1000"], "predict batch sizes")
FIT = flags.DEFINE_boolean("fit", True, "also time one epoch of fit (batch 128)")
TABLE = flags.DEFINE_string("table", None, "table (default: mul8u_L40 from ../shared, else drum6)")
DEVICE = flags.DEFINE_string("device", "/CPU:0", "TensorFlow device for the models")
FLOAT_KERAS = flags.DEFINE_boolean("float_keras", True, "time the plain Keras float32 model too")
TORCH = flags.DEFINE_boolean("torch_baseline", False, "time the float32 network in PyTorch (CUDA)")
LAYER_BATCH = flags.DEFINE_integer("layer_batch", 128, "batch of the per-layer table")


def resnet20():
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels, 1x1 projections."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
            y = keras.layers.BatchNormalization()(y)
            if stride != 1:
                shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="resnet20")


def resnet50():
    """The ResNet-50 shape: stem 7x7/2 + max pool, bottleneck stages [3, 4, 6, 3], 1000 classes."""
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = keras.layers.Conv2D(width, 1, use_bias=False)(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(y)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.BatchNormalization()(keras.layers.Conv2D(4 * width, 1, use_bias=False)(y))
            if block == 0:
                shortcut = keras.layers.Conv2D(4 * width, 1, strides=stride, use_bias=False)(x)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1000)(x), name="resnet50")


def lut_macs(layer):
    """LUT-MACs of one image through an approximate (or accurate) Conv2D/Dense layer."""
    out = layer.output.shape
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(out[1:])) * layer.kernel.shape[0]
    kh, kw, cg, _ = layer.kernel.shape
    return int(np.prod(out[1:])) * kh * kw * cg


def default_table():
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "axmul_8x8", "mul8u_L40.bin")
    if os.path.exists(shared):
        return os.path.normpath(shared), "mul8u_L40 (EvoApprox)"
    return "drum6", "drum6 (built-in family)"


def seconds(fn, repeats=2):
    fn()  # warm-up: tracing, kernel construction
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_float_seconds(name, images, batch):
    """The same float32 network in PyTorch on CUDA (TF32 off), inference at `batch`; None without it."""
    try:
        import torch
        import torch.nn as nn
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def conv(cin, cout, k, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride, bottleneck):
            super().__init__()
            if bottleneck:
                self.body = nn.Sequential(conv(cin, cout, 1), nn.ReLU(), conv(cout, cout, 3, stride), nn.ReLU(),
                                          conv(cout, 4 * cout, 1))
                cout *= 4
            else:
                self.body = nn.Sequential(conv(cin, cout, 3, stride), nn.ReLU(), conv(cout, cout, 3))
            self.short = conv(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    if name == "resnet20":
        layers, cin, size = [conv(3, 16, 3), nn.ReLU()], 16, 32
        for stage, width in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(Basic(cin, width, 2 if stage and not block else 1, False))
                cin = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    else:
        layers, cin, size = [conv(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64, 224
        for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for block in range(blocks):
                layers.append(Basic(cin, width, 2 if stage and not block else 1, True))
                cin = 4 * width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    net = nn.Sequential(*layers).cuda().eval().to(memory_format=torch.channels_last)
    x = torch.rand(images, 3, size, size, device="cuda").to(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            for i in range(0, images, batch):
                net(x[i:i + batch])
        torch.cuda.synchronize()

    return seconds(run)


def main(_):
    table, table_name = (TABLE.value, TABLE.value) if TABLE.value else default_table()
    rng = np.random.default_rng(0)
    print(f"table: {table_name}; device {DEVICE.value}; {os.cpu_count()} CPUs; TensorFlow {tf.__version__}")
    for net in NETS.value:
        with tf.device(DEVICE.value):
            model = {"resnet20": resnet20, "resnet50": resnet50}[net]()
            approx = ta.approximate_model(model, mul_map_file=table)
        approx_layers = ta.layers.approx_layers(approx)
        macs = sum(lut_macs(layer) for layer in approx_layers)
        shape = model.input_shape[1:]
        x = rng.uniform(0, 1, size=(IMAGES.value, *shape)).astype(np.float32)
        y = rng.integers(0, model.output_shape[-1], size=IMAGES.value)
        print(f"\n{net}: {len(approx_layers)} approximate layers, {macs / 1e6:.1f} M LUT-MACs per image, "
              f"{IMAGES.value} images")
        print(f"| step | approximate s | images/s | G LUT-MAC/s | float s | ratio |")
        print(f"| --- | ---: | ---: | ---: | ---: | ---: |")
        steps = [(f"predict batch {b}", int(b)) for b in BATCHES.value]
        for label, batch in steps:
            with tf.device(DEVICE.value):
                t_approx = seconds(lambda: approx.predict(x, batch_size=batch, verbose=0))
                t_float = (seconds(lambda: model.predict(x, batch_size=batch, verbose=0))
                           if FLOAT_KERAS.value else None)
            if t_float is None and TORCH.value:
                t_float = torch_float_seconds(net, IMAGES.value, batch)
            ratio = f"{t_approx / t_float:.1f}x" if t_float else "-"
            print(f"| {label} | {t_approx:.3f} | {IMAGES.value / t_approx:.0f} | "
                  f"{macs * IMAGES.value / t_approx / 1e9:.0f} | {t_float or float('nan'):.3f} | {ratio} |")
        if FIT.value:
            with tf.device(DEVICE.value):
                for m in (approx, model):
                    m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                t_approx = seconds(lambda: approx.fit(x, y, batch_size=128, epochs=1, verbose=0), repeats=1)
                t_float = (seconds(lambda: model.fit(x, y, batch_size=128, epochs=1, verbose=0), repeats=1)
                           if FLOAT_KERAS.value else None)
            ratio = f"{t_approx / t_float:.1f}x" if t_float else "-"
            print(f"| fit 1 epoch batch 128 | {t_approx:.3f} | {IMAGES.value / t_approx:.0f} | "
                  f"{3 * macs * IMAGES.value / t_approx / 1e9:.0f} (x3: forward + 2 backward) | "
                  f"{t_float or float('nan'):.3f} | {ratio} |")
        print(f"\nper layer, batch {LAYER_BATCH.value} (each layer alone, inference):")
        print("| layer | input | LUT-MACs/image | approximate ms | G LUT-MAC/s | float ms | ratio |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        accurate = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
        for layer in approx_layers:
            in_shape = (LAYER_BATCH.value, *layer.input.shape[1:])
            data = tf.constant(np.maximum(rng.normal(size=in_shape), 0).astype(np.float32))
            with tf.device(DEVICE.value):
                t_layer = seconds(tf.function(lambda: layer(data, training=False)), repeats=3)
                twin = accurate[layer.name]
                t_twin = (seconds(tf.function(lambda: twin(data, training=False)), repeats=3)
                          if FLOAT_KERAS.value else float("nan"))
            n = lut_macs(layer) * LAYER_BATCH.value
            print(f"| {layer.name} | {'x'.join(map(str, in_shape[1:]))} | {lut_macs(layer)} | "
                  f"{1e3 * t_layer:.2f} | {n / t_layer / 1e9:.1f} | {1e3 * t_twin:.2f} | {t_layer / t_twin:.1f}x |")


if __name__ == "__main__":
    app.run(main)
