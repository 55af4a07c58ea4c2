"""CLIP concept distillation ("3D Point Cloud Pre-training with Knowledge Distillation from 2D Images"),
alone or beside PPKT: the losses, the trainable part and the objective that runs the frozen CLIP teacher.

Two terms (docs/concept_distillation.md has the formulas):
- global: InfoNCE across the batch between each point set's attention-pooled 3D embedding and the
  mean CLIP image embedding of the frames that see the set;
- concept: per matched voxel, KL(p2d || p3d) between the softmax over the set's K concepts of their
  similarities to the voxel's pooled pixel CLIP feature (p2d, teacher side, detached) and to the
  voxel's projected student feature (p3d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene_kd.data.collate import sample_pairs
from scene_kd.distill.ppkt import ppkt_loss
from scene_kd.models.concept import ConceptHead, select_keys
from scene_kd.models.heads import PointProjection, UpsamplingProjection, sample_pixel_features
from scene_kd.sparse.backend import SparseBackend

OBJECTIVES = ("ppkt", "concept", "ppkt+concept")


def global_infonce(point_embeddings: Tensor, image_embeddings: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between B point-set embeddings and their B image embeddings [B, D], both
    L2-normalized, row i of both belonging to set i; the other sets of the batch are the negatives.

    `(CE(G Eᵀ / τ, arange B) + CE(E Gᵀ / τ, arange B)) / 2` in float32. With B < 2 there is no
    negative: the loss is 0 (with a zero gradient that still reaches every input).
    """
    if point_embeddings.shape != image_embeddings.shape or point_embeddings.dim() != 2:
        raise ValueError(f"global_infonce: point and image embeddings must both be [B, D], got "
                         f"{tuple(point_embeddings.shape)} and {tuple(image_embeddings.shape)}")
    if temperature <= 0:
        raise ValueError(f"global_infonce: temperature must be positive, got {temperature}")
    if point_embeddings.shape[0] < 2:
        return point_embeddings.float().sum() * 0.0
    logits = point_embeddings.float() @ image_embeddings.float().t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def concept_logits(concepts: Tensor, embeddings: Tensor, set_of_row: Tensor) -> Tensor:
    """Cosine similarities [U, K] of each row of `embeddings` [U, D] with the K concepts [B, K, D] of
    its own set (`set_of_row` int64 [U]); computed against all B * K concepts at once, so that memory
    is U * B * K, not U * K * D."""
    sets, k, d = concepts.shape
    every = embeddings.float() @ concepts.float().reshape(sets * k, d).t()  # [U, B * K]
    return every.view(-1, sets, k)[torch.arange(len(set_of_row), device=every.device), set_of_row]


def concept_kl(concepts: Tensor, pixel_targets: Tensor, point_embeddings: Tensor, set_of_row: Tensor,
               temperature: float, teacher_temperature: float) -> Tensor:
    """Mean over U matched voxels of KL(p2d || p3d), p2d = softmax_k(cos(c_k, pixel target) / τ_2d),
    detached (the teacher side), p3d = softmax_k(cos(c_k, point embedding) / τ_3d), over the K concepts
    of the voxel's set. concepts [B, K, D]; pixel_targets, point_embeddings [U, D] L2-normalized;
    set_of_row int64 [U]. τ_2d < τ_3d sharpens the target (DINO's guard against collapsed concepts)."""
    if pixel_targets.shape != point_embeddings.shape or pixel_targets.shape[0] != set_of_row.shape[0]:
        raise ValueError(f"concept_kl: pixel targets {tuple(pixel_targets.shape)}, point embeddings "
                         f"{tuple(point_embeddings.shape)} and set_of_row {tuple(set_of_row.shape)} must agree")
    if temperature <= 0 or teacher_temperature <= 0:
        raise ValueError(f"concept_kl: temperatures must be positive, got {temperature}, {teacher_temperature}")
    concepts = concepts.detach()
    with torch.no_grad():
        log_p2d = F.log_softmax(concept_logits(concepts, pixel_targets, set_of_row) / teacher_temperature, dim=1)
    log_p3d = F.log_softmax(concept_logits(concepts, point_embeddings, set_of_row) / temperature, dim=1)
    return (log_p2d.exp() * (log_p2d - log_p3d)).sum(dim=1).mean()


def concept_fit(concepts: Tensor, pixel_targets: Tensor, set_of_row: Tensor) -> Tensor:
    """Spherical k-means of each set's concepts [B, K, D] onto its voxels' pooled pixel CLIP features
    [U, D]: `mean_u (1 - max_k cos(c_k, target_u))`; only the nearest concept of each voxel moves."""
    return (1.0 - concept_logits(concepts, pixel_targets.detach(), set_of_row).max(dim=1).values).mean()


@torch.no_grad()
def concept_entropy(concepts: Tensor, pixel_targets: Tensor, set_of_row: Tensor, teacher_temperature: float) -> Tensor:
    """Mean entropy of p2d (as `concept_kl`) over the U voxels, in nats: log K means the teacher-side
    distributions are uniform (collapsed concepts), 0 that each voxel picks one concept."""
    log_p2d = F.log_softmax(concept_logits(concepts, pixel_targets, set_of_row) / teacher_temperature, dim=1)
    return -(log_p2d.exp() * log_p2d).sum(dim=1).mean()


def pooled_pixel_targets(teacher_map: Tensor, pairs: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Per voxel of `pairs` [M, 4]: the mean of its pairs' L2-normalized CLIP pixel features (the teacher
    map [B_img, D, h, w] read bilinearly at the pixel), L2-normalized. -> (voxel rows int64 [U] sorted,
    targets [U, D])."""
    pixels = sample_pixel_features(teacher_map.float(), pairs[:, 1], pairs[:, 2], pairs[:, 3], image_size)
    voxels, inverse = torch.unique(pairs[:, 0], return_inverse=True)
    sums = pixels.new_zeros(len(voxels), pixels.shape[1]).index_add_(0, inverse, F.normalize(pixels, dim=1))
    return voxels, F.normalize(sums, dim=1)


def set_image_embeddings(image_embeddings: Tensor, pairs: Tensor, voxel_sets: Tensor, num_sets: int) -> Tensor:
    """The CLIP embedding of the frames that see each point set: the mean of the L2-normalized image
    embeddings [B_img, D] of the images whose pairs [M, 4] hold the set's voxels, L2-normalized ->
    [num_sets, D]. voxel_sets: int64 [N] set of each voxel row. A set no image sees is a ValueError."""
    image_sets = torch.full((image_embeddings.shape[0],), -1, dtype=torch.int64, device=pairs.device)
    image_sets[pairs[:, 1]] = voxel_sets[pairs[:, 0]]
    seen = image_sets >= 0
    sums = image_embeddings.new_zeros(num_sets, image_embeddings.shape[1]).float()
    sums.index_add_(0, image_sets[seen], F.normalize(image_embeddings[seen].float(), dim=1))
    counts = torch.bincount(image_sets[seen], minlength=num_sets)
    if bool((counts == 0).any()):
        raise ValueError(f"set_image_embeddings: point sets {torch.nonzero(counts == 0).flatten().tolist()} "
                         "have no image with pairs")
    return F.normalize(sums, dim=1)


class ConceptTrainable(nn.Module):
    """What concept distillation trains: the student, the concept head and, with PPKT beside it, PPKT's
    two heads (`head2d`, `head3d`: the same names and loss as `PPKTTrainable`). DDP wraps this alone.

    Returns the weighted terms {"loss_ppkt" (with PPKT), "loss_global", "loss_concept",
    "loss_concept_fit"} and the diagnostic "concept_entropy_2d" (`concept_entropy`, logged, not summed).
    """

    def __init__(self, student: nn.Module, concept: ConceptHead, backend: SparseBackend, *,
                 head2d: UpsamplingProjection | None = None, head3d: PointProjection | None = None,
                 ppkt_temperature: float = 0.04, ppkt_weight: float = 1.0, global_weight: float = 1.0,
                 concept_weight: float = 1.0, concept_fit_weight: float = 1.0, global_temperature: float = 0.07,
                 concept_temperature: float = 0.1, concept_teacher_temperature: float = 0.05,
                 max_keys: int = 4096) -> None:
        super().__init__()
        if (head2d is None) != (head3d is None):
            raise ValueError("ConceptTrainable: PPKT needs both head2d and head3d, or neither")
        self.student, self.concept, self.backend = student, concept, backend
        self.head2d, self.head3d = head2d, head3d
        self.ppkt_temperature, self.ppkt_weight = ppkt_temperature, ppkt_weight
        self.global_weight, self.concept_weight = global_weight, concept_weight
        self.concept_fit_weight = concept_fit_weight
        self.global_temperature = global_temperature
        self.concept_temperature, self.concept_teacher_temperature = concept_temperature, concept_teacher_temperature
        self.max_keys = max_keys

    @property
    def with_ppkt(self) -> bool:
        return self.head2d is not None

    def forward(self, features: Tensor, coordinates: Tensor, teacher_map: Tensor, image_embeddings: Tensor,
                all_pairs: Tensor, pairs: Tensor, image_size: tuple[int, int],
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """features [N, 3], coordinates int32 [N, 4] (column 0: the point set), teacher_map
        [B_img, D, h, w] (CLIP space), image_embeddings [B_img, D], all_pairs int64 [M_all, 4] (every
        pair of the batch: which frames see which set, which voxels are keys first), pairs [M, 4] (the
        sampled pairs of the losses), image_size (H, W), generator: draws the attention keys (None:
        torch's global state) -> the weighted loss terms."""
        if pairs.shape[0] == 0:  # every sample of the batch was dropped: a zero step, same graph in every process
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            # the same keys as a full step: the log averages them across processes by name
            return {**({"loss_ppkt": zero} if self.with_ppkt else {}), "loss_global": zero, "loss_concept": zero,
                    "loss_concept_fit": zero, "concept_entropy_2d": zero.detach()}
        voxel_features = self.student(self.backend.sparse_tensor(features, coordinates)).F
        voxel_sets = coordinates[:, 0].long()
        num_sets = int(voxel_sets.max()) + 1
        losses = {}
        if self.with_ppkt:
            loss = ppkt_loss(voxel_features, self.head2d, self.head3d, teacher_map, pairs, image_size,
                             self.ppkt_temperature)
            losses["loss_ppkt"] = self.ppkt_weight * loss

        paired = torch.zeros(len(voxel_features), dtype=torch.bool, device=voxel_features.device)
        paired[all_pairs[:, 0]] = True
        keys = select_keys(voxel_sets, self.max_keys, preferred=paired, generator=generator)
        concepts, global_embedding = self.concept(voxel_features[keys], voxel_sets[keys], num_sets)

        targets_e = set_image_embeddings(image_embeddings, all_pairs, voxel_sets, num_sets)
        loss = global_infonce(global_embedding, targets_e, self.global_temperature)
        losses["loss_global"] = self.global_weight * loss

        voxels, pixel_targets = pooled_pixel_targets(teacher_map, pairs, image_size)
        points = self.concept.project_points(voxel_features[voxels])
        loss = concept_kl(concepts, pixel_targets, points, voxel_sets[voxels], self.concept_temperature,
                          self.concept_teacher_temperature)
        losses["loss_concept"] = self.concept_weight * loss
        loss = concept_fit(concepts, pixel_targets, voxel_sets[voxels])
        losses["loss_concept_fit"] = self.concept_fit_weight * loss
        losses["concept_entropy_2d"] = concept_entropy(concepts, pixel_targets, voxel_sets[voxels],
                                                       self.concept_teacher_temperature)
        return losses


class ConceptObjective(nn.Module):
    """model(batch) -> the weighted loss terms: runs the frozen CLIP teacher (outside DDP, no grad) once
    for the dense CLIP-space map and the image embeddings, samples `num_pairs` pairs and calls the
    trainable part. batch: as `PPKTObjective`'s (`collate_pretrain`)."""

    def __init__(self, trainable: nn.Module, teacher: nn.Module, num_pairs: int = 4096) -> None:
        super().__init__()
        if not getattr(teacher, "has_global_embedding", False) or teacher.embed_dim is None:
            raise ValueError(
                f"concept distillation needs a CLIP teacher with CLIP-space dense features and an image embedding "
                f"(teacher.name=clip, and teacher.options.clip_space=true for ResNets); got {type(teacher).__name__} "
                f"with embed_dim={getattr(teacher, 'embed_dim', None)}")
        self.trainable = trainable
        self.teacher = teacher
        self.num_pairs = num_pairs

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """generator: draws the pair sample and the attention keys (None: torch's global state)."""
        pairs = sample_pairs(batch["pairs"], self.num_pairs, generator=generator)
        images = batch["images"]
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        if pairs.shape[0]:
            teacher_map, image_embeddings = self.teacher.encode(images)
        else:  # unused: the trainable part returns zero losses
            teacher_map, image_embeddings = images.new_zeros(0, 1, 1, 1), images.new_zeros(0, 1)
        return self.trainable(batch["features"], batch["coordinates"], teacher_map, image_embeddings,
                              batch["pairs"], pairs, image_size, generator=generator)
