from pathlib import Path

import pytest
import torch

REFERENCE_MODEL = Path(__file__).resolve().parents[1] / "data" / "tiny_clip_openai.safetensors"


@pytest.fixture(scope="session")
def reference_clip():
    """The reference tiny CLIP (OpenAI format) and open_clip's tokenizer; skipped when not vendored."""
    if not REFERENCE_MODEL.exists():
        pytest.skip(f"{REFERENCE_MODEL} not present")
    import open_clip
    from safetensors.torch import load_file

    model = open_clip.model.build_model_from_openai_state_dict(
        load_file(REFERENCE_MODEL), quick_gelu=True, cast_dtype=None
    ).float().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture
def toy_features(reference_clip):
    """Image features of 3 classes of constant-colour images, separable by the frozen image tower."""
    model, _ = reference_clip
    generator = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    images, labels = [], []
    for label, colour in enumerate(colours):
        for _ in range(8):
            images.append(colour.view(3, 1, 1) + 0.3 * torch.randn(3, 32, 32, generator=generator))
            labels.append(label)
    with torch.no_grad():
        features = model.encode_image(torch.stack(images))
    return features, torch.tensor(labels)
