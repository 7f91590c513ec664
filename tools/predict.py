#!/usr/bin/env python
"""Look at what a trained ALBEF sees (``albef_plugin.inference.predict``)::

    python tools/predict.py --checkpoint weights/refcoco.pth --task itm --image dog.jpg --text "a dog"
    python tools/predict.py --checkpoint CKPT --task retrieve --images photos/ --index photos_index/
    python tools/predict.py --checkpoint CKPT --task retrieve --index photos_index/ --text "a red car" --rerank 16
    python tools/predict.py --checkpoint CKPT --task retrieve --index photos_index/ --image query.jpg
    python tools/predict.py --checkpoint CKPT --task gradcam --image dog.jpg --text "a dog" --out heatmaps/
    python tools/predict.py --checkpoint weights/vqa.pth --task vqa --image dog.jpg \
        --question "what is the dog doing?" --answer-list answer_list.json --k 128 --top-k 5

CPU by default; ``--device cuda`` on a GPU machine; ``--output FILE`` also writes the JSON.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef_plugin.inference.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
