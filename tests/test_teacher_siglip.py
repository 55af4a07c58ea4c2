"""SigLIP teachers through open_clip (`teacher.name=clip`, a SigLIP model): a random model with
ViT-B-16-SigLIP's image tower (timm's vit_base_patch16_siglip_224, attention-pool head) and a small text
tower, built from an open_clip model-config JSON, saved as an open_clip checkpoint and loaded back
through the recipe; the global embedding against open_clip's `encode_image`, the dense value path
against timm's own pooling where the pool attends over one token, text embeddings, and the offline
tokenizer error of the built-in SigLIP names."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scene_kd.config import load_config
from scene_kd.distill.schema import PretrainConfig
from scene_kd.models.teachers import build_teacher
from scene_kd.models.teachers.clip import ClipTimmViTTeacher, clip_text_embeddings, clip_tokenizer

REPO = Path(__file__).resolve().parents[1]
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
SMALL_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
              "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}


def images(height, width, batch=1, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def siglip_normalized(x):
    return (x - torch.tensor(SIGLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(SIGLIP_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def small_siglip(tmp_path_factory):
    """(open_clip model, its config JSON path, its checkpoint path): ViT-B-16-SigLIP's model config with
    the text tower shrunk (open_clip's SimpleTokenizer instead of SigLIP's Hugging Face one)."""
    import open_clip

    from scene_kd.models.teachers.clip import clip_from_config_file

    config = open_clip.get_model_config("ViT-B-16-SigLIP")
    config["text_cfg"] = SMALL_TEXT
    root = tmp_path_factory.mktemp("siglip")
    config_path = root / "small_siglip_b16.json"
    config_path.write_text(json.dumps(config))
    torch.manual_seed(0)
    model = clip_from_config_file(config_path).eval()
    weights = root / "small_siglip_b16.pt"
    torch.save(model.state_dict(), weights)
    return model, config_path, weights


@pytest.fixture(scope="module")
def teacher(small_siglip):
    """Built as tools/pretrain.py builds it from the SigLIP recipe (weights and model overridden)."""
    _, config_path, weights = small_siglip
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/ppkt_siglip_vitb16.yaml",
                      [f"teacher.weights={weights}", f"teacher.options.model={config_path}"])
    assert cfg.teacher.name == "clip"
    return build_teacher(cfg.teacher.name, weights=cfg.teacher.weights, allow_random=cfg.teacher.allow_random,
                         **cfg.teacher.options)


@pytest.fixture(scope="module")
def dynamic_trunk(small_siglip):
    """timm's own SigLIP trunk with the same weights, dynamic_img_size=True: the oracle at other sizes."""
    import timm

    model, _, _ = small_siglip
    trunk = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0,
                              global_pool="map", dynamic_img_size=True).eval()
    trunk.load_state_dict(model.visual.trunk.state_dict())
    return trunk


def test_global_embedding_is_open_clips_encode_image(small_siglip, teacher):
    model, _, _ = small_siglip
    assert isinstance(teacher, ClipTimmViTTeacher)
    assert (teacher.out_channels, teacher.stride, teacher.embed_dim) == (768, 16, 768)
    assert teacher.has_global_embedding
    torch.testing.assert_close(teacher.pixel_mean.flatten(), torch.tensor(SIGLIP_MEAN))
    torch.testing.assert_close(teacher.pixel_std.flatten(), torch.tensor(SIGLIP_STD))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    x = images(224, 224)
    dense, embedding = teacher.encode(x)
    assert dense.shape == (1, 768, 14, 14)
    with torch.no_grad():
        expected = model.encode_image(siglip_normalized(x))
    torch.testing.assert_close(embedding, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(teacher(x), dense)


def test_dense_path_is_the_pool_itself_over_one_token(teacher, dynamic_trunk):
    """A 16 x 16 image is one patch: the attention pool then attends over one token (softmax 1 in every
    head), so its output is the value path exactly; timm's full forward is the oracle."""
    x = images(16, 16, batch=2, seed=1)
    dense = teacher(x)
    assert dense.shape == (2, 768, 1, 1)
    with torch.no_grad():
        expected = dynamic_trunk(siglip_normalized(x))
    torch.testing.assert_close(dense[:, :, 0, 0], expected, atol=1e-4, rtol=1e-4)


def test_frame_size_tokens_and_one_value_path_token(teacher, dynamic_trunk):
    """240 x 320: the trunk's tokens equal timm's dynamic_img_size forward_features, the global embedding
    timm's forward, and one dense cell the pool's value path written out from its modules."""
    x = images(240, 320, seed=2)
    tokens, grid = teacher.tokens(siglip_normalized(x))
    dense, embedding = teacher.encode(x)
    assert grid == (15, 20) and dense.shape == (1, 768, 15, 20)
    with torch.no_grad():
        expected_tokens = dynamic_trunk.forward_features(siglip_normalized(x))
        torch.testing.assert_close(tokens, expected_tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(embedding, dynamic_trunk(siglip_normalized(x)), atol=1e-4, rtol=1e-4)
        pool = dynamic_trunk.attn_pool
        token = expected_tokens[0, 7 * 20 + 11]  # row 7, column 11
        value = pool.kv.weight[768:] @ token + pool.kv.bias[768:]
        y = pool.proj.weight @ value + pool.proj.bias
        normed = F.layer_norm(y, (768,), pool.norm.weight, pool.norm.bias, pool.norm.eps)
        y = y + pool.mlp.fc2(F.gelu(pool.mlp.fc1(normed)))
    torch.testing.assert_close(dense[0, :, 7, 11], y, atol=1e-4, rtol=1e-4)
    # sides that are not multiples of 16 run at the nearest multiples: 250 x 330 -> 256 x 336
    assert teacher(images(250, 330)).shape == (1, 768, 16, 21)


def test_text_embeddings_for_zero_shot(small_siglip):
    from open_clip.tokenizer import SimpleTokenizer

    model, config_path, weights = small_siglip
    names = ["chair", "table", "wall"]
    embeddings = clip_text_embeddings(str(config_path), str(weights), names, templates=("a {} in a room.",))
    with torch.no_grad():
        tokens = SimpleTokenizer(context_length=16)([f"a {n} in a room." for n in names])
        expected = F.normalize(model.encode_text(tokens), dim=-1)
    assert embeddings.shape == (3, 768)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)


def test_builtin_siglip_tokenizer_offline_is_a_one_line_error(tmp_path, monkeypatch):
    """SigLIP's built-in names use a Hugging Face tokenizer: without `transformers`, or without its files
    in the local cache, a one-line ValueError names the tokenizer (never a download)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for model in ("ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"):
        hf_name = f"timm/{model}"
        expected = f"tokenizer '{hf_name}' of '{model}'|of '{model}' is the Hugging Face tokenizer"
        with pytest.raises(ValueError, match=expected) as error:
            clip_tokenizer(model, cache_dir=tmp_path / "cache")
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="timm/ViT-B-16-SigLIP"):  # before any model is built
        clip_text_embeddings("ViT-B-16-SigLIP", None, ["chair"], allow_random=True,
                             cache_dir=tmp_path / "cache")


def test_builtin_siglip_name_and_unsupported_timm_towers(tmp_path):
    siglip = build_teacher("clip", model="ViT-B-16-SigLIP", allow_random=True)
    assert isinstance(siglip, ClipTimmViTTeacher) and (siglip.out_channels, siglip.stride) == (768, 16)
    torch.testing.assert_close(siglip.pixel_mean.flatten(), torch.tensor(SIGLIP_MEAN))
    assert siglip(images(32, 48)).shape == (1, 768, 2, 3)
    vision = {"timm_model_name": "vit_tiny_patch16_224", "timm_pool": "avg", "timm_proj": "linear",
              "image_size": 224}
    config = {"embed_dim": 192, "vision_cfg": vision, "text_cfg": SMALL_TEXT}
    path = tmp_path / "avg_pooled_timm_vit.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="avg_pooled_timm_vit.json' has no dense reading: .*pool='avg'"):
        build_teacher("clip", model=str(path), allow_random=True)


def test_hf_tokenizer_is_read_from_the_local_cache_only(tmp_path, monkeypatch):
    """With a stand-in `transformers` whose AutoTokenizer records its arguments: the tokenizer is asked
    for with local_files_only=True and the given cache_dir, and its OSError (files not cached) becomes
    the one-line ValueError."""
    import importlib.machinery
    import sys
    import types

    calls = []

    class AutoTokenizer:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append((name, kwargs))
            raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}.\nCheck ...")

    stand_in = types.ModuleType("transformers")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("transformers", None)
    stand_in.AutoTokenizer = AutoTokenizer
    monkeypatch.setitem(sys.modules, "transformers", stand_in)
    expected = "tokenizer 'timm/ViT-B-16-SigLIP' of 'ViT-B-16-SigLIP' is not usable from the Hugging Face"
    with pytest.raises(ValueError, match=expected) as error:
        clip_tokenizer("ViT-B-16-SigLIP", cache_dir=tmp_path)
    assert "\n" not in str(error.value) and "OSError" in str(error.value)
    assert calls == [("timm/ViT-B-16-SigLIP", {"cache_dir": str(tmp_path), "local_files_only": True})]


def hf_cache_with_siglip_tokenizer(cache: Path, repo: str, workdir: Path) -> Path:
    """A Hugging Face cache holding `repo`'s tokenizer where the Hub's download would put it
    (`models--<org>--<name>/snapshots/<commit>/`, `refs/main` naming the commit, and the marker
    `.no_exist/<commit>/config.json` the Hub client leaves for a file the repository lacks, which
    transformers >= 5 asks for before the tokenizer): a SentencePiece model
    trained here on two sentences (40 pieces), saved by transformers' SiglipTokenizer. Returns the
    snapshot directory."""
    import sentencepiece
    from transformers import SiglipTokenizer

    corpus = workdir / "corpus.txt"
    corpus.write_text("a photo of a chair in a room. a table next to the wall. a bed, a sofa and a lamp.\n"
                      "floor cabinet door window bookshelf picture counter desk curtain refrigerator shower\n" * 20)
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(workdir / "spiece"), vocab_size=40,
                                             model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=2)
    commit = "0" * 40
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    SiglipTokenizer(vocab_file=str(workdir / "spiece.model"), model_max_length=64).save_pretrained(
        repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    (repo_dir / ".no_exist" / commit).mkdir(parents=True)
    (repo_dir / ".no_exist" / commit / "config.json").touch()
    return repo_dir / "snapshots" / commit


def test_builtin_siglip_text_tower_reads_its_tokenizer_from_the_local_cache(tmp_path, monkeypatch):
    """With `transformers` and the tokenizer's files in the local cache (as open_clip.get_tokenizer leaves
    them on a machine with internet access), zero-shot text embeddings of the built-in ViT-B-16-SigLIP
    work offline: the tokens are the Hugging Face tokenizer's on SigLIP's canonical text (lower case,
    no punctuation), padded to 64, and the embeddings are the text tower's on those tokens."""
    pytest.importorskip("transformers", reason="needs transformers (pip install -e .[dev] or .[siglip])")
    pytest.importorskip("sentencepiece", reason="needs sentencepiece (pip install -e .[dev] or .[siglip])")
    import open_clip
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    snapshot = hf_cache_with_siglip_tokenizer(cache, "timm/ViT-B-16-SigLIP", tmp_path)
    reference = AutoTokenizer.from_pretrained(snapshot)

    def reference_tokens(texts):
        return reference(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt").input_ids

    tokens = clip_tokenizer("ViT-B-16-SigLIP", cache_dir=cache)(["A Chair, in a room!"])
    expected = reference_tokens(["a chair in a room"])
    assert tokens.shape == (1, 64) and int((expected != reference.pad_token_id).sum()) > 4
    torch.testing.assert_close(tokens, expected)

    names = ["chair", "table", "wall"]
    torch.manual_seed(0)
    embeddings = clip_text_embeddings("ViT-B-16-SigLIP", None, names, templates=("a {} in a room.",),
                                      allow_random=True, cache_dir=cache)
    torch.manual_seed(0)  # the same random weights
    model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None, pretrained_text=False).eval()
    with torch.no_grad():
        expected = F.normalize(model.encode_text(reference_tokens([f"a {n} in a room" for n in names])), dim=-1)
    assert embeddings.shape == (3, 768)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
