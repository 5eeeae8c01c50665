"""The float32 baseline of benchmarks/models.py in PyTorch: the same network, inference on CUDA.

Benchmark-only. models.py runs this script in a separate process, because on the GPU machine the
TensorFlow process carries stand-in cuDNN/cuBLAS libraries on PYTHONPATH / LD_LIBRARY_PATH that
break torch's CUDA; so this file imports no TensorFlow and only the standard library at top level.

    python benchmarks/torch_baseline.py --net resnet20 --images 10000 --batch 128

Prints one JSON line, {"net", "batch", "images", "seconds", "device"} with seconds the median of 2
runs over all images after a warm-up run, or {"error": ...} when torch or CUDA is missing; the exit
status is 0 both ways.
"""

import argparse
import json
import statistics
import time


def seconds(fn, repeats=2):
    """Median wall time of `repeats` calls of fn after one warm-up call (tracing, kernel selection)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network(name, torch):
    """(net, image size): models.py's resnet20 / resnet50 in float32, BatchNorm after every conv."""
    nn = torch.nn

    def conv(cin, cout, k, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))

    class Block(nn.Module):
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
                layers.append(Block(cin, width, 2 if stage and not block else 1, False))
                cin = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    else:
        # 2x2 pooling, as benchmarks/models.py's MaxPool2x2
        layers, cin, size = [conv(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(2, 2)], 64, 224
        for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for block in range(blocks):
                layers.append(Block(cin, width, 2 if stage and not block else 1, True))
                cin = 4 * width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return nn.Sequential(*layers), size


def run(net_name, images, batch):
    """The JSON-ready result of timing inference over `images` images in batches of `batch`."""
    try:
        import torch
    except ImportError as error:
        return {"error": f"torch is not installed ({error})"}
    if not torch.cuda.is_available():
        return {"error": f"torch {torch.__version__} sees no CUDA device"}
    # Full float32 products, as the Keras float model computes them.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net, size = network(net_name, torch)
    net = net.cuda().eval().to(memory_format=torch.channels_last)
    x = torch.rand(images, 3, size, size, device="cuda").to(memory_format=torch.channels_last)

    def predict():
        with torch.no_grad():
            for i in range(0, images, batch):
                net(x[i:i + batch])
        torch.cuda.synchronize()  # the launches are asynchronous: wait for the work itself

    return {"net": net_name, "batch": batch, "images": images, "seconds": seconds(predict),
            "device": torch.cuda.get_device_name()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=("resnet20", "resnet50"), default="resnet20")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(run(args.net, args.images, args.batch)))


if __name__ == "__main__":
    main()
