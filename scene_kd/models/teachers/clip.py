"""open_clip CLIP teachers (ResNet and ViT image towers) and CLIP text embeddings, from local weights only.

ResNets (RN50, RN101) give the layer4 map before attention pooling (stride 32), optionally carried into
CLIP's embedding space by the attention pool's value and output projections applied per location
(`c_proj(v_proj(x))`, as MaskCLIP does for ResNets, without the pool's positional embedding). ViTs
(ViT-B-16, ViT-L-14) give dense CLIP-space patch features according to the tower's open_clip `pool_type`:
- "tok" (OpenAI's CLIP: the class token is the image embedding): the MaskCLIP way, the last residual
  block's query-key attention is skipped and each patch token keeps only its value path,
  `x + out_proj(v(ln_1(x)))` followed by the block's MLP residual, then `ln_post` and `proj` (MaskCLIP's
  mmseg ViT with `return_qkv=True, final_norm=True` and its head's `proj`);
- "avg" (the mean of the patch tokens is the image embedding, so CLIP's loss trains each of them): the
  patch tokens after the full last block, through `ln_post` and `proj`; their mean is the image
  embedding (exactly, unless `final_ln_after_pool`, where `ln_post` comes after the mean).
SigLIP and SigLIP2 (`ViT-B-16-SigLIP`, `ViT-SO400M-14-SigLIP`, `ViT-B-16-SigLIP2`, ...: a timm ViT trunk
pooled by timm's attention-pool head, timm_pool "map") give dense features in their image-text space by
the same MaskCLIP reasoning as the ResNets' attention pool: the trunk runs unchanged, and each patch token
(after the trunk's final norm) goes through the pool's value path alone, `proj(W_v x + b_v)`, then the
pool's MLP residual `y + mlp(norm(y))` and the tower's heads; no token mixing in the pool. Where the pool
would attend over one token, that is exactly the pooled embedding.
Other image towers (an attentional pooler, pool_type "none", other timm towers) have no such dense reading
and are refused. Weights come from a local file or open_clip's local cache; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene_kd.models.teachers.base import CLIP_MEAN, CLIP_STD, Teacher, freeze_teacher, require_weights

CLIP_MODELS = (
    "RN50",
    "RN101",
    "ViT-B-16",
    "ViT-L-14",
    "ViT-B-16-SigLIP",
)  # tested; other open_clip names with the same towers work (ViT-B-16-SigLIP2, ViT-SO400M-14-SigLIP, ...)
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def clip_how_to_get(model: str, pretrained: str | None = None) -> str:
    tag = pretrained or "openai"
    return (
        f"Get the weights on a machine with internet access, e.g. open_clip.create_model({model!r}, "
        f"pretrained={tag!r}, cache_dir='DIR') (open_clip tags for {model}: see "
        f"open_clip.list_pretrained_tags_by_model({model!r})), then copy DIR here and pass cache_dir='DIR', "
        f"pretrained={tag!r}, or pass the checkpoint file itself as weights= (for the OpenAI tag that is the "
        f"file named in open_clip.get_pretrained_cfg({model!r}, 'openai')['url'])."
    )


def find_cached_clip_weights(model: str, pretrained: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local file of open_clip's pretrained tag `pretrained` for `model`, looked up without network.

    Looks where open_clip would have downloaded it: the Hugging Face hub cache (`cache_dir`, else the
    default hub cache) for the tag's `hf_hub` repository, then `cache_dir` (else `~/.cache/clip`) for
    the basename of the tag's URL. Raises FileNotFoundError naming the places looked at.
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise ValueError(
            f"clip teacher: {pretrained!r} is not an open_clip pretrained tag of {model!r}; known tags: "
            f"{open_clip.list_pretrained_tags_by_model(model)}"
        )
    if cfg.get("file"):
        return require_weights(cfg["file"], False, "clip teacher", clip_how_to_get(model, pretrained))
    looked = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(
            cfg["hf_hub"]
        )  # open_clip's convention: "org/repo/" or "org/repo/file"
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith(".bin"):
            names.insert(0, filename[: -len(".bin")] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(
                repo_id, name, cache_dir=None if cache_dir is None else os.fspath(cache_dir)
            )
            if isinstance(found, str) and os.path.isfile(found):
                return found
            looked.append(
                f"hub cache {'default' if cache_dir is None else os.fspath(cache_dir)}: {repo_id}/{name}"
            )
    if cfg.get("url"):
        path = os.path.join(
            os.fspath(cache_dir) if cache_dir else os.path.expanduser("~/.cache/clip"),
            os.path.basename(cfg["url"]),
        )
        if os.path.isfile(path):
            return path
        looked.append(path)
    raise FileNotFoundError(
        f"clip teacher: weights of {model!r} pretrained={pretrained!r} are not in the local cache (looked for "
        f"{'; '.join(looked)}). {clip_how_to_get(model, pretrained)}"
    )


def is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip such as OpenAI's original CLIP `.pt` files."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


@contextlib.contextmanager
def _quiet_random_init_notice() -> Iterator[None]:
    # open_clip logs "initialized randomly" on the root logger whenever pretrained=None, which is
    # misleading here: the weights are loaded right after.
    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def is_clip_config_file(model: str | os.PathLike) -> bool:
    """True when `model` is the path of an open_clip model-config file (`.json`), not a built-in name."""
    return os.fspath(model).lower().endswith(".json")


def clip_model_config(model: str | os.PathLike) -> dict | None:
    """The open_clip model config of `model` (a fresh dict): a built-in name's (None when unknown), or the
    JSON file at the path `model` in open_clip's own model-config format (`embed_dim`, `vision_cfg`,
    `text_cfg`, optional `quick_gelu`, `custom_text`, ...; an `open_clip_config.json` with a `model_cfg`
    key is read too). A missing or malformed file is an error naming it."""
    import json

    import open_clip

    if not is_clip_config_file(model):
        return open_clip.get_model_config(os.fspath(model))
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"clip teacher: model config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"clip teacher: {path}: not a readable JSON model config: {error}") from error
    if isinstance(config, dict) and isinstance(config.get("model_cfg"), dict):
        config = config["model_cfg"]
    if not (isinstance(config, dict) and isinstance(config.get("embed_dim"), int)
            and isinstance(config.get("vision_cfg"), dict) and isinstance(config.get("text_cfg"), dict)):
        raise ValueError(f"clip teacher: {path}: an open_clip model config needs an integer 'embed_dim' and "
                         "'vision_cfg' and 'text_cfg' objects (as open_clip/model_configs/*.json)")
    if {"hf_model_name", "hf_tokenizer_name"} & set(config["text_cfg"]):
        raise ValueError(f"clip teacher: {path}: Hugging Face text towers (text_cfg.hf_model_name, "
                         "hf_tokenizer_name) are not supported from a config file: they would be downloaded")
    return config


def clip_from_config_file(path: str | os.PathLike, quick_gelu: bool = False) -> nn.Module:
    """A randomly initialized open_clip model built from the model-config file `path` the way
    `open_clip.create_model` builds a built-in config (CLIP, CustomTextCLIP or CoCa; no tower weights
    fetched), without adding the config to open_clip's global registry."""
    import open_clip

    config = clip_model_config(path)
    if quick_gelu:
        config["quick_gelu"] = True
    if "timm_model_name" in config["vision_cfg"]:
        config["vision_cfg"]["timm_model_pretrained"] = False
    model_class = open_clip.CLIP
    if config.pop("custom_text", False):
        model_class = open_clip.CoCa if "multimodal_cfg" in config else open_clip.CustomTextCLIP
    try:
        return model_class(**config)
    except Exception as error:
        raise ValueError(f"clip teacher: cannot build an open_clip {model_class.__name__} from "
                         f"{os.fspath(path)!r}: {type(error).__name__}: {error}") from error


def clip_tokenizer(
    model: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> Callable[[Sequence[str]], Tensor]:
    """open_clip's tokenizer for `model` (a built-in name or a model-config file): texts -> int64
    tokens [N, context_length]. For a config file, open_clip's SimpleTokenizer (its BPE vocabulary
    ships inside the package) at the config's `text_cfg.context_length` (default 77). Models whose
    tokenizer is a Hugging Face one (SigLIP, SigLIP2: `text_cfg.hf_tokenizer_name`) need the
    `transformers` package and the tokenizer's files in the local Hugging Face cache (`cache_dir`, else
    the default); they are never downloaded, and a missing piece is a one-line ValueError."""
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, SimpleTokenizer

    if not is_clip_config_file(model):
        model = os.fspath(model)
        hf_name = ((open_clip.get_model_config(model) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
        if hf_name:
            return hf_tokenizer(model, hf_name, cache_dir)
        return open_clip.get_tokenizer(model)
    text_cfg = clip_model_config(model)["text_cfg"]
    return SimpleTokenizer(context_length=int(text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)),
                           **text_cfg.get("tokenizer_kwargs", {}))


def hf_tokenizer(model: str, hf_name: str, cache_dir: str | os.PathLike | None) -> Callable:
    """open_clip's HFTokenizer of `model` from the local Hugging Face cache only (see `clip_tokenizer`)."""
    import importlib.util

    import open_clip

    where = "the default Hugging Face cache"
    if cache_dir:
        where = f"the Hugging Face cache {os.fspath(cache_dir)!r}"
    how_to_get = (f"on a machine with internet access run open_clip.get_tokenizer({model!r}) (it fills the "
                  f"Hugging Face cache with {hf_name!r}) and copy the cache here (HF_HOME, or pass "
                  "cache_dir=)")
    if importlib.util.find_spec("transformers") is None:
        raise ValueError(f"clip teacher: the text tokenizer of {model!r} is the Hugging Face tokenizer "
                         f"{hf_name!r}, which needs the transformers package (pip install transformers "
                         f"sentencepiece) and its files in {where}: {how_to_get}")
    try:
        return open_clip.get_tokenizer(model, cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                                       local_files_only=True)
    except (OSError, ValueError, ImportError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"clip teacher: the text tokenizer {hf_name!r} of {model!r} is not usable from "
                         f"{where} ({type(error).__name__}: {detail}); {how_to_get}") from error


def load_clip_model(
    model: str,
    weights: str | os.PathLike | None = None,
    pretrained: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    allow_random: bool = False,
) -> nn.Module:
    """An open_clip CLIP model (both towers, eval mode, float32 on CPU) with local weights.

    `weights` is a checkpoint file (open_clip state dict, `.safetensors`, or OpenAI's TorchScript
    `.pt`); else `pretrained` names an open_clip tag found in the local cache (`cache_dir`); else
    random weights, only with `allow_random=True`. `quick_gelu` None means: the tag's setting, True
    for an OpenAI TorchScript file, otherwise the model config's (pass True for OpenAI weights
    converted to a state dict, or use the `-quickgelu` model name). `model` is an open_clip model
    name, or the path of an open_clip model-config JSON file (`clip_model_config`) for a custom
    architecture, built without registering it in open_clip (weights then come from `weights`).
    """
    import open_clip

    model = os.fspath(model)
    if is_clip_config_file(model):
        clip_model_config(model)  # a missing or malformed file is an error before any weights are read
        if pretrained is not None:
            raise ValueError(f"clip teacher: pretrained tags name weights of open_clip's built-in models; "
                             f"for the model config file {model!r} pass the checkpoint trained with it as weights=")
        how_to_get = f"Pass the checkpoint trained with the model config {model!r} as weights=."
    elif open_clip.get_model_config(model) is None:
        raise ValueError(f"clip teacher: unknown open_clip model {model!r}; tested: {list(CLIP_MODELS)} "
                         "(or pass the path of an open_clip model config .json)")
    else:
        how_to_get = clip_how_to_get(model, pretrained)
    if weights is None and pretrained is not None:
        path = find_cached_clip_weights(model, pretrained, cache_dir)
    else:
        path = require_weights(weights, allow_random, "clip teacher", how_to_get)
    jit = path is not None and is_torchscript_archive(path)
    if quick_gelu is None:
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
        quick_gelu = bool(tag_cfg.get("quick_gelu", False)) or jit
    if is_clip_config_file(model):
        clip = clip_from_config_file(model, quick_gelu)
    else:
        with _quiet_random_init_notice():
            clip = open_clip.create_model(
                model, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False
            )
    if path is not None:
        try:
            if jit:
                state = torch.jit.load(path, map_location="cpu").state_dict()
                # OpenAI's archives carry these scalars; traced open_clip models carry non-persistent buffers
                dropped = {"input_resolution", "context_length", "vocab_size"}
                dropped |= {name for name, _ in clip.named_buffers()} - set(clip.state_dict())
                state = {key: value for key, value in state.items() if key not in dropped}
                clip.load_state_dict(state, strict=True)
            else:
                open_clip.load_checkpoint(clip, path, strict=True)
        except Exception as error:
            raise ValueError(
                f"clip teacher: cannot load {path!r} into open_clip {model!r}: {error}"
            ) from error
    return clip.eval()


class ClipTeacher(Teacher):
    """Shared by the CLIP towers: the tower's normalization (CLIP's unless given) and an optional fixed
    run resolution."""

    def __init__(self, image_size: int | Sequence[int] | None, multiple: int,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        super().__init__(mean, std)
        if image_size is not None:
            image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if len(image_size) != 2 or any(s <= 0 or s % multiple for s in image_size):
                raise ValueError(
                    f"clip teacher: image_size must be two positive multiples of {multiple}, got {image_size}"
                )
        self.image_size = image_size

    def run_size(self, height: int, width: int) -> tuple[int, int]:
        return self.image_size or (height, width)

    def resized(self, images: Tensor) -> Tensor:
        size = self.run_size(*images.shape[-2:])
        if size == tuple(images.shape[-2:]):
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


class ClipResNetTeacher(ClipTeacher):
    """CLIP ModifiedResNet: layer4 [B, 2048, H/32, W/32], or in CLIP space [B, embed_dim, H/32, W/32]."""

    def __init__(self, visual: nn.Module, clip_space: bool, image_size: int | Sequence[int] | None = None):
        super().__init__(image_size, 1)
        self.visual = visual
        self.clip_space = clip_space
        self.stride = 32
        width = visual.attnpool.v_proj.in_features
        self.embed_dim = visual.attnpool.c_proj.out_features if clip_space else None
        self.out_channels = self.embed_dim if clip_space else width

    has_global_embedding = True

    def layer4(self, images: Tensor) -> Tensor:
        v = self.visual
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(self.resized(images))))))  # stride 32

    def dense(self, x: Tensor) -> Tensor:
        if self.clip_space:
            pool = self.visual.attnpool
            x = pool.c_proj(pool.v_proj(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x

    def extract(self, images: Tensor) -> Tensor:
        return self.dense(self.layer4(images))

    def extract_with_global(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(the dense map as `extract`, CLIP's image embedding [B, embed_dim] by the attention pool)."""
        x = self.layer4(images)
        return self.dense(x), attention_pool(self.visual.attnpool, x)


def attention_pool(pool: nn.Module, x: Tensor) -> Tensor:
    """CLIP's AttentionPool2d on a layer4 map x [B, C, h, w] of any size -> [B, output_dim].

    open_clip's forward, with the positional embedding of the spatial positions resized bicubically
    to (h, w) when the map is not the native grid, and only the pooled (mean) token as query (the
    output open_clip keeps).
    """
    batch, channels, h, w = x.shape
    tokens = x.flatten(2).permute(2, 0, 1)  # [hw, B, C]
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    pos = pool.positional_embedding
    side = round((pos.shape[0] - 1) ** 0.5)
    if (h, w) != (side, side):
        grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.to(pos.dtype).flatten(2)[0].T], dim=0)
    tokens = tokens + pos[:, None, :].to(tokens.dtype)
    pooled, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=channels, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False,
    )
    return pooled[0]


def maskclip_value_path(block: nn.Module, tokens: Tensor) -> Tensor:
    """MaskCLIP's last block: tokens [B, L, D] -> [B, L, D] through the value path only (no token mixing).

    `x + ls_1(out_proj(W_v ln_1(x) + b_v))`, then the block's MLP residual `x + ls_2(mlp(ln_2(x)))`.
    """
    attn = block.attn
    width = attn.embed_dim
    if attn.in_proj_weight is not None:
        value_weight = attn.in_proj_weight[2 * width :]
    else:
        value_weight = attn.v_proj_weight
    value_bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    values = F.linear(block.ln_1(tokens), value_weight, value_bias)
    x = tokens + block.ls_1(attn.out_proj(values))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


DENSE_POOL_TYPES = ("tok", "avg")  # open_clip VisionTransformer pool types with a dense reading


def vit_pool_type(visual: nn.Module, model: str | os.PathLike) -> str:
    """The open_clip `pool_type` of the VisionTransformer `visual` ("tok" or "avg"); a ValueError naming
    `model` for a tower without a dense reading (an attentional pooler, pool_type "none")."""
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"clip teacher: the image tower of {os.fspath(model)!r} pools with an attentional "
                         f"pooler (vision_cfg.attentional_pool), which has no per-patch reading; supported ViT "
                         f"pool types: {list(DENSE_POOL_TYPES)}")
    pool_type = getattr(visual, "pool_type", "tok")
    if pool_type not in DENSE_POOL_TYPES:
        raise ValueError(f"clip teacher: the image tower of {os.fspath(model)!r} has pool_type {pool_type!r}; "
                         f"supported ViT pool types: {list(DENSE_POOL_TYPES)} (vision_cfg.pool_type)")
    return pool_type


class ClipViTTeacher(ClipTeacher):
    """CLIP VisionTransformer, dense CLIP-space patch features [B, embed_dim, H/p, W/p] (p = patch size):
    MaskCLIP's value path for pool_type "tok", the patch tokens for "avg" (see the module docstring).

    Inputs whose sides are not multiples of p are resized to the nearest multiples (or to
    `image_size` when given); the positional embedding is interpolated bicubically to the patch grid.
    `model` names the tower in errors.
    """

    def __init__(self, visual: nn.Module, image_size: int | Sequence[int] | None = None,
                 model: str = "the VisionTransformer"):
        pool_type = vit_pool_type(visual, model)
        patch = visual.patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if patch[0] != patch[1]:
            raise ValueError(f"clip teacher: square patches expected, got {patch}")
        super().__init__(image_size, patch[0])
        self.visual = visual
        self.pool_type = pool_type
        self.final_ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        self.stride = patch[0]
        self.out_channels = self.embed_dim = visual.proj.shape[1]

    def run_size(self, height: int, width: int) -> tuple[int, int]:
        if self.image_size is not None:
            return self.image_size
        p = self.stride
        return max(p, round(height / p) * p), max(p, round(width / p) * p)

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """[1 + gh * gw, D]: the class position and the patch positions resized to `grid`."""
        pos = self.visual.positional_embedding
        base = tuple(self.visual.grid_size)
        if grid == base:
            return pos
        patches = pos[1:].reshape(1, base[0], base[1], -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], patches.to(pos.dtype).flatten(2)[0].T], dim=0)

    has_global_embedding = True

    def tokens_before_last_block(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalized images -> (tokens [B, 1 + gh * gw, width] after all blocks but the last, (gh, gw))."""
        v = self.visual
        images = self.resized(images)
        x = v.conv1(images)  # [B, width, gh, gw], stride p
        batch, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding((gh, gw)).to(x.dtype)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in v.transformer.resblocks[:-1]:
            x = block(x)
        return (x if batch_first else x.transpose(0, 1)), (gh, gw)

    def last_block(self, tokens: Tensor) -> Tensor:
        """The unchanged last block on batch-first tokens [B, L, width]."""
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        x = self.visual.transformer.resblocks[-1](tokens if batch_first else tokens.transpose(0, 1))
        return x if batch_first else x.transpose(0, 1)

    def dense(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Tokens before the last block [B, 1 + gh * gw, width] -> the dense map [B, embed_dim, gh, gw]."""
        v = self.visual
        if self.pool_type == "avg":
            x = self.last_block(tokens)[:, 1:]  # the tokens open_clip's mean pools
        else:
            x = maskclip_value_path(v.transformer.resblocks[-1], tokens[:, 1:])  # no mixing: no class token needed
        x = v.ln_post(x) @ v.proj
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def extract(self, images: Tensor) -> Tensor:
        return self.dense(*self.tokens_before_last_block(images))

    def extract_with_global(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(the dense map as `extract`, CLIP's image embedding [B, embed_dim] as open_clip pools it: "tok",
        the class token through the unchanged last block, `ln_post` and `proj`, sharing the first L-1
        blocks with the MaskCLIP path; "avg", the mean of the dense map's tokens (`ln_post` after the mean
        when `final_ln_after_pool`), sharing the whole forward)."""
        v = self.visual
        tokens, (gh, gw) = self.tokens_before_last_block(images)
        x = self.last_block(tokens)
        if self.pool_type == "tok":
            return self.dense(tokens, (gh, gw)), v.ln_post(x[:, 0]) @ v.proj
        patches = x[:, 1:]
        normed = v.ln_post(patches)
        dense = (normed @ v.proj).transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        pooled = v.ln_post(patches.mean(dim=1)) if self.final_ln_after_pool else normed.mean(dim=1)
        return dense, pooled @ v.proj


def attention_pool_value_path(pool: nn.Module, tokens: Tensor) -> Tensor:
    """timm's AttentionPoolLatent (SigLIP's `map` head) applied to each token alone: tokens [B, N, D] ->
    [B, N, out]: `y = proj(W_v x + b_v)`, then `y + mlp(norm(y))`. With one token to attend over, the
    pool's forward gives exactly this (its softmax is 1 for every head)."""
    width = pool.kv.out_features // 2  # kv's rows: the keys, then the values
    bias = pool.kv.bias[width:] if pool.kv.bias is not None else None
    y = pool.proj(F.linear(tokens, pool.kv.weight[width:], bias))
    return y if pool.mlp is None else y + pool.mlp(pool.norm(y))


def timm_tower_problem(visual: nn.Module) -> str | None:
    """Why the open_clip timm image tower `visual` has no dense reading here, or None for a ViT trunk
    pooled by timm's attention-pool head (`map`, SigLIP) with absolute positions."""
    from timm.layers import AttentionPoolLatent
    from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

    trunk = getattr(visual, "trunk", None)
    if not isinstance(trunk, TimmVisionTransformer):
        return f"its timm trunk is a {type(trunk).__name__}, not a timm VisionTransformer"
    if not isinstance(trunk.attn_pool, AttentionPoolLatent) or trunk.attn_pool.pos_embed is not None:
        return (f"its trunk pools with global_pool={trunk.global_pool!r}; supported: an attention-pool head "
                "without positions (timm_pool 'map', as SigLIP)")
    if trunk.pos_embed is None or getattr(trunk, "rope", None) is not None:
        return "its trunk has no absolute positional embedding"
    return None


class ClipTimmViTTeacher(ClipTeacher):
    """SigLIP-style open_clip tower (a timm ViT trunk with an attention-pool head): dense image-text
    features [B, embed_dim, H/p, W/p], each patch token through the pool's value path
    (`attention_pool_value_path`) and the heads after it; the trunk itself runs unchanged.

    Inputs whose sides are not multiples of p are resized to the nearest multiples (or to `image_size`);
    the trunk's positional embedding is resampled to the patch grid with timm's `resample_abs_pos_embed`
    (bicubic, antialiased), as timm's `dynamic_img_size` does. `mean` / `std`: the tower's normalization
    (SigLIP's is 0.5 / 0.5).
    """

    has_global_embedding = True

    def __init__(self, visual: nn.Module, image_size: int | Sequence[int] | None = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        patch = tuple(visual.trunk.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ValueError(f"clip teacher: square patches expected, got {patch}")
        super().__init__(image_size, patch[0], mean, std)
        self.visual = visual
        self.stride = patch[0]
        with torch.no_grad():
            probe = torch.zeros(1, 1, visual.trunk.embed_dim)
            self.out_channels = self.embed_dim = self.heads(attention_pool_value_path(visual.trunk.attn_pool,
                                                                                      probe)).shape[-1]

    run_size = ClipViTTeacher.run_size

    def tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalized images -> (the trunk's tokens after its final norm [B, prefix + gh * gw, width], the
        patch grid (gh, gw))."""
        from timm.layers import resample_abs_pos_embed

        trunk = self.visual.trunk
        x = trunk.patch_embed.proj(self.resized(images))  # [B, width, gh, gw], stride p
        batch, _, gh, gw = x.shape
        x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))
        extra = [token for token in (trunk.cls_token, trunk.reg_token) if token is not None]
        prefix = [token.to(x.dtype).expand(batch, -1, -1) for token in extra]
        in_positions = 0 if trunk.no_embed_class else trunk.num_prefix_tokens  # prefix tokens with a position
        positions = resample_abs_pos_embed(trunk.pos_embed, new_size=(gh, gw), num_prefix_tokens=in_positions,
                                           old_size=trunk.patch_embed.grid_size)
        positions = positions.to(x.dtype)
        if trunk.no_embed_class:
            x = torch.cat([*prefix, x + positions], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + positions
        return trunk.norm(trunk.blocks(trunk.norm_pre(x))), (gh, gw)

    def heads(self, pooled: Tensor) -> Tensor:
        """What follows the attention pool: the trunk's fc_norm and head, then open_clip's head."""
        trunk = self.visual.trunk
        return self.visual.head(trunk.head(trunk.fc_norm(pooled)))

    def dense(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        patches = tokens[:, self.visual.trunk.num_prefix_tokens:]
        x = self.heads(attention_pool_value_path(self.visual.trunk.attn_pool, patches))
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def extract(self, images: Tensor) -> Tensor:
        return self.dense(*self.tokens(images))

    def extract_with_global(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(the dense map as `extract`, the image embedding as open_clip pools it: the trunk's own
        `forward_head` (attention pool, fc_norm, head) and open_clip's head on the same trunk tokens)."""
        tokens, grid = self.tokens(images)
        return self.dense(tokens, grid), self.visual.head(self.visual.trunk.forward_head(tokens))


def timm_tower_normalization(visual: nn.Module, model: str, pretrained: str | None) -> tuple[tuple, tuple]:
    """(mean, std) of a timm image tower: the open_clip pretrained tag's when given, else the timm
    architecture's default (SigLIP: 0.5, 0.5), else CLIP's."""
    import open_clip

    cfg = {}
    if pretrained and not is_clip_config_file(model):
        cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        cfg = getattr(visual.trunk, "pretrained_cfg", None) or {}
    if cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return CLIP_MEAN, CLIP_STD


def build_clip_teacher(
    model: str,
    weights: str | os.PathLike | None = None,
    pretrained: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    clip_space: bool | None = None,
    image_size: int | Sequence[int] | None = None,
    quick_gelu: bool | None = None,
    allow_random: bool = False,
) -> ClipTeacher:
    """Frozen CLIP image tower of open_clip `model` ("RN50", "RN101", "ViT-B-16", "ViT-L-14",
    "ViT-B-16-SigLIP", ...).

    ResNets: layer4 features, in CLIP space when `clip_space=True` (default False). ViTs: dense
    CLIP-space features, MaskCLIP's for open_clip pool_type "tok", the patch tokens for "avg" (see
    `ClipViTTeacher`; other pool types and attentional poolers are a ValueError; `clip_space=False`
    is an error). SigLIP / SigLIP2 (timm trunks with an attention-pool head): each patch token through
    the pool's value path (`ClipTimmViTTeacher`), normalized with the tag's (else timm's) mean and std.
    `image_size` fixes the resolution the tower runs at (input resized; ViT positional embeddings
    interpolated to its patch grid). Weights as in `load_clip_model`; the text tower is dropped.
    `model` may also be the path of an open_clip model-config JSON file (a custom architecture; see
    `load_clip_model`).
    """
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    config = clip_model_config(model)
    if (
        config is not None
        and clip_space is False
        and not isinstance(config["vision_cfg"].get("layers"), (tuple, list))
    ):
        # checked before loading any weights: open_clip builds a ModifiedResNet exactly when layers is a list
        raise ValueError(f"clip teacher: {model!r} is a ViT, whose dense features are CLIP-space only")
    visual = load_clip_model(model, weights, pretrained, cache_dir, quick_gelu, allow_random).visual
    if isinstance(visual, ModifiedResNet):
        teacher = ClipResNetTeacher(visual, bool(clip_space), image_size)
    elif (
        isinstance(visual, VisionTransformer)
        and visual.proj is not None
        and isinstance(visual.transformer.resblocks[-1], ResidualAttentionBlock)
        and isinstance(visual.transformer.resblocks[-1].attn, nn.MultiheadAttention)
    ):
        if clip_space is False:
            raise ValueError(f"clip teacher: {model!r} is a ViT, whose dense features are CLIP-space only")
        teacher = ClipViTTeacher(visual, image_size, model=os.fspath(model))
    elif isinstance(visual, TimmModel):
        problem = timm_tower_problem(visual)
        if problem is not None:
            raise ValueError(f"clip teacher: the timm image tower of {os.fspath(model)!r} has no dense "
                             f"reading: {problem}")
        mean, std = timm_tower_normalization(visual, os.fspath(model), pretrained)
        teacher = ClipTimmViTTeacher(visual, image_size, mean, std)
    else:
        raise ValueError(
            f"clip teacher: the image tower of {model!r} ({type(visual).__name__}) is not supported"
        )
    return freeze_teacher(teacher)


def clip_text_embeddings(
    model_name: str,
    weights: str | os.PathLike | None,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    pretrained: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    allow_random: bool = False,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Normalized CLIP text embeddings [K, D], one per class: the mean over `templates` ("... {} ...").

    Uses the text tower of the same local weights as the teacher (see `load_clip_model`) and the
    model's open_clip tokenizer (`clip_tokenizer`; SigLIP's Hugging Face tokenizers from the local cache
    `cache_dir`).
    """
    if not class_names:
        raise ValueError("clip_text_embeddings: class_names is empty")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(
            f"clip_text_embeddings: every template needs a '{{}}' for the class name, got {templates}"
        )
    tokenizer = clip_tokenizer(model_name, cache_dir)  # before the weights: a missing tokenizer fails fast
    clip = load_clip_model(model_name, weights, pretrained, cache_dir, quick_gelu, allow_random)
    clip.visual = nn.Identity()  # only the text tower is needed
    clip = clip.to(device)
    tokens = tokenizer([t.format(name) for name in class_names for t in templates])
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tokens.to(device)).float(), dim=-1)
    return F.normalize(text.view(len(class_names), len(templates), -1).mean(dim=1), dim=-1)
