"""Random convolution configurations for the op tests."""


def random_config(rng):
    """A random convolution covering 1x1, 3x3, 5x5 and whole-input filters, groups, all paddings."""
    h, w = rng.choice([1, 3, 6, 9]), rng.choice([2, 5, 8])
    cg = int(rng.choice([1, 2, 3, 4]))
    groups = int(rng.choice([1, 1, 2, 3]))
    cout = groups * int(rng.choice([1, 2, 4]))
    kh, kw = rng.choice([1, 3, 5]), rng.choice([1, 3])
    if rng.random() < 0.2:
        kh, kw = h, w
    dil = (int(rng.choice([1, 1, 2])), int(rng.choice([1, 2])))
    h, w = max(h, (kh - 1) * dil[0] + 1), max(w, (kw - 1) * dil[1] + 1)
    padding = str(rng.choice(["SAME", "VALID", "EXPLICIT"]))
    explicit = ((int(rng.integers(0, 3)), int(rng.integers(0, 3))),
                (int(rng.integers(0, 3)), int(rng.integers(0, 3))))
    return dict(shape=(int(rng.integers(1, 4)), int(h), int(w), cg * groups),
                filter_shape=(int(kh), int(kw), cg, cout),
                strides=(int(rng.integers(1, 4)), int(rng.integers(1, 4))), dilations=dil,
                padding=padding, explicit=explicit if padding == "EXPLICIT" else None,
                data_format=str(rng.choice(["NHWC", "NCHW"])), num_bits=int(rng.integers(2, 9)))
