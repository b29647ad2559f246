"""Train the demo's BadNet once and write the weights the package ships (torch_badnet/demo/bd_net_demo.h5).

    python scripts/train_demo_model.py [--out-dir torch_badnet/demo]

Renders the default demo config's training faces (seeded numpy: the same bytes on every CPU), trains the
backdoored BadNet on them (seeded, deterministic on one CPU; float32 training on another CPU gives another
net, which is why the result is shipped rather than trained at first run), and writes bd_net_demo.h5 (Keras
weights layout, as the workspace holds it) and bd_net_demo.json: the config, the file's sha256 and what the
net measures on the demo's test and validation sets. `torch-badnet demo --retrain` trains the same way into
the demo workspace instead, leaving the package alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import torch

from torch_badnet.convert.keras_h5 import write_keras_weights
from torch_badnet.data.files import file_sha256, write_text
from torch_badnet.demo import DemoConfig
from torch_badnet.demo.faces import random_identities
from torch_badnet.demo.workspace import SHIPPED_CARD, SHIPPED_MODEL, data_streams, measure, render_eval_sets, train_demo_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=str(SHIPPED_MODEL.parent), help="where bd_net_demo.h5/.json go")
    args = parser.parse_args()
    config = DemoConfig()
    identities = random_identities(config.identities, data_streams(config)["identity"])
    result = train_demo_model(config, print, identities)
    model_path, card_path = Path(args.out_dir) / SHIPPED_MODEL.name, Path(args.out_dir) / SHIPPED_CARD.name
    write_keras_weights(result.model, model_path)
    facts = measure(result.model, render_eval_sets(config, identities, print))
    card = {
        "config": dataclasses.asdict(config),
        "sha256": file_sha256(model_path),
        "bytes": model_path.stat().st_size,
        **facts,
        "final_loss": round(result.final_loss, 5),
        "trained_with": {"torch": torch.__version__, "machine": platform.machine(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }
    write_text(card_path, json.dumps(card, indent=2, sort_keys=True) + "\n")
    print(f"clean test accuracy {facts['clean_test_accuracy']:.2%}, attack success {facts['attack_success_rate']:.2%}; "
          f"wrote {model_path} ({card['bytes']} bytes) and {card_path}")


if __name__ == "__main__":
    main()
