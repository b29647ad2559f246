"""`torch-badnet classify`: the class of each face image (the GoodNet's, with --pruned or a GoodNet graph)."""

from __future__ import annotations

import argparse

from .common import add_device_argument, add_input_shape_argument, add_model_argument, device_from, net_for, print_json

HELP = "the class of each face image (PNG/JPEG, 55x47; for other models their input size, greyscale for 1 channel)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help=HELP, description=HELP)
    add_model_argument(p)
    add_input_shape_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="face images")
    p.add_argument("--resize", action="store_true", help="scale images of another size to 55x47")
    p.add_argument("--json", action="store_true", help='print [{"path": .., "label": ..}, ...]')
    add_device_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ...data.images import load_images
    from ...errors import BadInputError
    from ...nets.badnet import INPUT_SHAPE
    from ...nets.goodnet import answers_labels
    from ...nets.predict import labels_in_batches

    device = device_from(args)
    net = net_for(args, device)
    channels, height, width = getattr(getattr(net, "model", net), "input_shape", INPUT_SHAPE)
    if channels not in (1, 3):
        raise BadInputError(args.model, f"takes {channels}-channel inputs; classify reads images as colour (3) or greyscale (1)")
    pixels = load_images(args.images, resize=args.resize, channels=channels, size=(height, width))
    labels = [int(v) for v in labels_in_batches(net, pixels.to(device)).cpu()]
    detected = net.detected_class if answers_labels(net) else None
    if args.json:
        print_json([{"path": path, "label": label} for path, label in zip(args.images, labels)])
        return 0
    for path, label in zip(args.images, labels):
        note = "  (backdoor detected)" if label == detected else ""
        print(f"{path}\t{label}{note}")
    return 0
