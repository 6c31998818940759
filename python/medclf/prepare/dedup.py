"""Duplicate detection: exact copies, and near copies found in two steps.

1. Fingerprints (`fingerprint_files`, one decode per image, JPEGs at reduced scale, in a process
   pool): the SHA-256 of the file's bytes, a 64x64 gray thumbnail, its candidate descriptors, and
   ORB keypoints of the gray image (longer side 192 px) and of its mirror image.
2. Candidates (`candidate_pairs`): every image's nearest neighbours by cosine similarity of a
   blurred 12x12 thumbnail inside the inscribed disc (zero mean, unit norm: brightness and
   contrast drop out; the disc ignores corners that rotation fills). Each image is indexed under
   46 views: its eight flips/rotations, two turns of 10 degrees, and 36 windows (80 % or 90 % of
   the height by 80 % or 90 % of the width, 3x3 positions), so rotated, cropped and zoomed copies
   still find their original. No distance threshold: each image gets its `neighbours` most similar
   others, however (dis)similar the collection is.
3. Verification (`verify_pairs`): ORB keypoints matched between the two images (the second one
   mirrored when the best candidate view was a mirror image) and a RANSAC similarity transform
   (rotation, scale, shift); the score is the number of matches that agree with it. Two different
   pictures rarely agree on more than a handful; copies agree on dozens.
4. Groups (`find_duplicates`): identical bytes, identical decoded pixels, a decisions file's
   verdicts and verified pairs are joined (union-find over pairs only: no chaining through mere
   similarity).

Duplicates become groups that never cross splits, so the same picture re-encoded, resized,
flipped, cropped or re-lit cannot sit in train and in test at once.
"""

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medclf.core.errors import UnreadableImageError
from medclf.data.imageio import read_image

THUMB_SIZE = 64  # gray square thumbnail the descriptors are cut from
DESCRIPTOR_SIZE = 12  # descriptor grid (12x12, inside the inscribed disc)
DESCRIPTOR_BLUR = 1.5  # Gaussian sigma at 24x24, before the 12x12 reduction
PCA_DIMS = 32  # descriptors are projected on their first principal axes (speed)
WINDOW_SCALES = (0.8, 0.9)  # sub-windows for crops and zooms: each height x each width, 3x3 positions
N_DIHEDRAL = 8  # views 0-7: the flips and rotations (odd = mirrored); then turns and windows
ROTATION_VIEWS = 10  # degrees: views turned either way, for photographs taken at an angle
VERIFY_SIZE = 192  # longer side of the verification image, in pixels
ORB_FEATURES = 300  # keypoints per image, strongest first
ORB_FAST_THRESHOLD = 5  # low, so that smooth skin and blurred slices still get keypoints
ORB_LEVELS = 4  # scale pyramid: 1 to 1.7; images are brought to one size first
RANSAC_TOLERANCE = 3.0  # pixels at VERIFY_SIZE
SCREEN_KEYPOINTS = 100  # first look: the strongest 100 keypoints of each image ...
SCREEN_MIN_INLIERS = 6  # ... must give this many inliers before all keypoints are matched
DEFAULT_NEIGHBOURS = 8
DEFAULT_MIN_INLIERS = 20
PIXEL_CHECK_MAX_DIFF = 2.0  # mean |thumbnail difference| below which decoded pixels are compared


@dataclass
class Fingerprint:
    """What duplicate detection needs of one image, small enough to keep for 10,000 images."""

    path: str
    sha256: str
    thumb: np.ndarray  # uint8 (THUMB_SIZE, THUMB_SIZE), gray, aspect ratio not kept
    views: np.ndarray  # float16 (views, pixels in the disc): the candidate descriptors, unit vectors
    points: np.ndarray  # float32 (n, 2) ORB keypoints (strongest first) of the gray image scaled to VERIFY_SIZE
    orb: np.ndarray  # uint8 (n, 32) their descriptors, or None when no keypoint was found
    mirror_points: np.ndarray  # the same for the mirror image (ORB descriptors are not mirror-invariant)
    mirror_orb: np.ndarray


def single_threaded_opencv():
    """Turn OpenCV's own thread pool off, in this process, before forking workers. A child forked
    while the parent's pool exists hangs at its next pool operation (seen: two forked fingerprint
    workers blocked in cv2.setNumThreads after an earlier in-process run); children inherit the
    setting, and parallelism comes from the process pool instead."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _orb_features(gray):
    import cv2

    orb = cv2.ORB_create(nfeatures=ORB_FEATURES, nlevels=ORB_LEVELS, edgeThreshold=15, patchSize=15,
                         fastThreshold=ORB_FAST_THRESHOLD)
    keypoints, descriptors = orb.detectAndCompute(gray, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), None
    order = np.argsort([-k.response for k in keypoints], kind="stable")  # strongest first
    points = np.float32([keypoints[k].pt for k in order]).reshape(-1, 2)
    return points, descriptors[order]


def _verification_image(gray):
    """Gray image scaled (up or down) so its longer side is VERIFY_SIZE: a half-size copy and
    its original then show keypoints at the same scale."""
    scale = VERIFY_SIZE / max(gray.size)
    size = (max(1, round(gray.size[0] * scale)), max(1, round(gray.size[1] * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(gray.resize(size, resample))


def _disc():
    centre = (DESCRIPTOR_SIZE - 1) / 2
    yy, xx = np.mgrid[:DESCRIPTOR_SIZE, :DESCRIPTOR_SIZE]
    return np.hypot(yy - centre, xx - centre) <= DESCRIPTOR_SIZE / 2


def _descriptor_grid(gray):
    import cv2

    small = cv2.resize(gray, (2 * DESCRIPTOR_SIZE, 2 * DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), DESCRIPTOR_BLUR)
    return cv2.resize(small, (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA)


def _views(thumb):
    """The image's views as descriptor grids: 8 flips/rotations (odd = mirrored), two turns of
    ROTATION_VIEWS degrees, then the windows."""
    import cv2

    gray = thumb.astype(np.float32)
    whole = _descriptor_grid(gray)
    views = []
    for quarter_turns in range(4):
        turned = np.rot90(whole, quarter_turns)
        views += [turned, turned[:, ::-1]]
    centre = ((THUMB_SIZE - 1) / 2, (THUMB_SIZE - 1) / 2)
    for angle in (-ROTATION_VIEWS, ROTATION_VIEWS):
        matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
        views.append(_descriptor_grid(cv2.warpAffine(gray, matrix, (THUMB_SIZE, THUMB_SIZE),
                                                     borderMode=cv2.BORDER_REPLICATE)))
    for scale_h in WINDOW_SCALES:
        for scale_w in WINDOW_SCALES:
            h, w = round(THUMB_SIZE * scale_h), round(THUMB_SIZE * scale_w)
            for top in (0, (THUMB_SIZE - h) // 2, THUMB_SIZE - h):
                for left in (0, (THUMB_SIZE - w) // 2, THUMB_SIZE - w):
                    views.append(_descriptor_grid(gray[top:top + h, left:left + w]))
    return np.stack(views)


_DISC = _disc()


def _normalise(vectors):
    vectors = vectors - vectors.mean(axis=-1, keepdims=True)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)


def fingerprint_file(path):
    """Fingerprint of one image file. Raises UnreadableImageError."""
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    gray = read_image(path, draft_size=VERIFY_SIZE).convert("L")
    thumb = np.asarray(gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX))
    views = _normalise(_views(thumb)[:, _DISC]).astype(np.float16)
    verify = _verification_image(gray)
    points, orb = _orb_features(verify)
    mirror_points, mirror_orb = _orb_features(np.ascontiguousarray(verify[:, ::-1]))
    return Fingerprint(str(path), digest, thumb, views, points, orb, mirror_points, mirror_orb)


def _fingerprint_or_error(path):
    try:
        return fingerprint_file(path)
    except UnreadableImageError as exc:
        return exc


def default_workers():
    return max(1, min(2, os.cpu_count() or 1))


def fingerprint_files(paths, workers=None, progress=False, desc="reading images"):
    """Fingerprints of many files, in order; an unreadable file gives its UnreadableImageError
    in its place instead of stopping the others."""
    from tqdm import tqdm

    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else workers
    bar = dict(total=len(paths), desc=desc, unit="img", disable=not progress)
    single_threaded_opencv()
    if workers <= 1 or len(paths) < 64:  # a pool costs more than it saves on a few images
        return [_fingerprint_or_error(p) for p in tqdm(paths, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_fingerprint_or_error, paths, chunksize=32), **bar))


# ---------------------------------------------------------------- step 1: candidates

def view_descriptors(views):
    """Fingerprint views (n, V, pixels in the disc) -> (n, V, PCA_DIMS) float32 unit vectors;
    view 0 is the image as it is."""
    views = np.asarray(views, dtype=np.float32)
    # Principal axes of the images as they are: 32 numbers keep what tells them apart.
    centred = views[:, 0] - views[:, 0].mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = views @ axes[:PCA_DIMS].T
    return (projected / np.maximum(np.linalg.norm(projected, axis=-1, keepdims=True), 1e-6)).astype(np.float32)


def _similarity_rows(queries, flat, n_views, n, target_block=2048):
    """Similarity of each query to each image under that image's best view: (rows, n)."""
    best = np.empty((len(queries), n), dtype=np.float32)
    for start in range(0, n, target_block):
        stop = min(n, start + target_block)
        sims = queries @ flat[:, start * n_views:stop * n_views]  # view index fastest
        best[:, start:stop] = sims.reshape(len(queries), stop - start, n_views).max(axis=2)
    return best


def nearest_neighbours(descriptors, neighbours, block=256):
    """For each image (view 0) its `neighbours` most similar other images, each compared under
    all of the other's views. Returns (indices (n, k), similarities (n, k)), most similar first."""
    n, n_views, dims = descriptors.shape
    k = min(neighbours, n - 1)
    queries = np.ascontiguousarray(descriptors[:, 0])
    flat = np.ascontiguousarray(descriptors.reshape(n * n_views, dims).T)
    indices = np.zeros((n, k), dtype=np.int64)
    similarities = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        best = _similarity_rows(queries[rows], flat, n_views, n)
        best[np.arange(best.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf  # not itself
        top = np.argpartition(-best, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(-best, axis=1)[:, :k]
        top_sims = np.take_along_axis(best, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)  # most similar first, ties by index
        indices[rows] = np.take_along_axis(top, order, axis=1)
        similarities[rows] = np.take_along_axis(top_sims, order, axis=1)
    return indices, similarities


def _best_views(descriptors, first, second):
    """For pairs (first[k], second[k]): the view of the second image most similar to the first
    image as it is, and that similarity."""
    sims = np.einsum("kvd,kd->kv", descriptors[second], descriptors[first, 0])
    return sims.argmax(axis=1), sims.max(axis=1)


@dataclass
class Candidate:
    i: int
    j: int
    similarity: float  # cosine similarity of the descriptors (1 = identical)
    mirrored: bool  # the best view of j was a mirror image of it
    inliers: int = 0  # verification score
    verdict: str = ""  # exact_bytes | exact_pixels | duplicate | different | same_group (not checked)
    decided_by: str = "detector"  # or "decisions file"


def candidate_pairs(descriptors, neighbours=DEFAULT_NEIGHBOURS):
    """Unordered pairs (i < j) where one is among the other's nearest neighbours, with the
    similarity and the mirror flag of the best view."""
    if len(descriptors) < 2 or neighbours <= 0:
        return []
    indices, _ = nearest_neighbours(descriptors, neighbours)
    seen = set()
    for i, row in enumerate(indices):
        for j in row:
            pair = (min(i, int(j)), max(i, int(j)))
            if pair[0] != pair[1]:
                seen.add(pair)
    first, second = np.array(sorted(seen), dtype=np.int64).reshape(-1, 2).T
    # The better direction: j's views against i, or i's views against j.
    view_ij, sim_ij = _best_views(descriptors, first, second)
    view_ji, sim_ji = _best_views(descriptors, second, first)
    view = np.where(sim_ij >= sim_ji, view_ij, view_ji)
    sim = np.maximum(sim_ij, sim_ji)
    mirrored = (view < N_DIHEDRAL) & (view % 2 == 1)
    return [Candidate(int(i), int(j), round(float(s), 6), bool(m)) for i, j, s, m in zip(first, second, sim, mirrored)]


# ---------------------------------------------------------------- step 2: verification

_RATIO = 0.8  # Lowe's ratio test: a match must be clearly better than the second best


def count_inliers(points_a, orb_a, points_b, orb_b, strongest=None):
    """Matches between two images that agree with one similarity transform (RANSAC), using
    the `strongest` keypoints of each (None = all)."""
    import cv2

    if strongest and orb_a is not None and orb_b is not None:
        points_a, orb_a = points_a[:strongest], orb_a[:strongest]
        points_b, orb_b = points_b[:strongest], orb_b[:strongest]
    if orb_a is None or orb_b is None or len(orb_a) < 2 or len(orb_b) < 2:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [m[0] for m in matcher.knnMatch(orb_a, orb_b, k=2)
            if len(m) == 2 and m[0].distance < _RATIO * m[1].distance]
    if len(good) < 3:
        return 0
    target = points_a[[m.queryIdx for m in good]]
    source = points_b[[m.trainIdx for m in good]]
    _, inliers = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                             ransacReprojThreshold=RANSAC_TOLERANCE, maxIters=500,
                                             confidence=0.99, refineIters=0)
    return 0 if inliers is None else int(inliers.sum())


def verify_pair(fa, fb, mirrored, min_inliers=DEFAULT_MIN_INLIERS):
    """Inlier count between fingerprints `fa` and `fb` (`fb` mirrored when the candidate step
    found its mirror image more similar). A first look with the strongest keypoints (4-9 times
    cheaper) settles most pairs: different pictures stay below SCREEN_MIN_INLIERS, clear copies
    already reach `min_inliers`; only the pairs in between are matched with all keypoints."""
    points_b, orb_b = (fb.mirror_points, fb.mirror_orb) if mirrored else (fb.points, fb.orb)
    screened = count_inliers(fa.points, fa.orb, points_b, orb_b, strongest=SCREEN_KEYPOINTS)
    if screened < SCREEN_MIN_INLIERS or screened >= min_inliers:
        return screened
    return count_inliers(fa.points, fa.orb, points_b, orb_b)


_POOL_FINGERPRINTS = None  # set before forking the verification pool: workers inherit it


def _verify_indexed(job):
    i, j, mirrored, min_inliers = job
    return verify_pair(_POOL_FINGERPRINTS[i], _POOL_FINGERPRINTS[j], mirrored, min_inliers)


def verify_pairs(fingerprints, pairs, workers=None, progress=False):
    """Inlier counts of (i, j, mirrored, min_inliers) jobs, in order. Forked workers share the fingerprints
    instead of receiving a copy of each pair's images."""
    import multiprocessing

    from tqdm import tqdm

    global _POOL_FINGERPRINTS
    workers = default_workers() if workers is None else workers
    bar = dict(total=len(pairs), desc="verifying duplicate candidates", unit="pair", disable=not progress)
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    single_threaded_opencv()
    _POOL_FINGERPRINTS = fingerprints
    try:
        if workers <= 1 or len(pairs) < 200 or not can_fork:
            return [_verify_indexed(p) for p in tqdm(pairs, **bar)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(tqdm(pool.map(_verify_indexed, pairs, chunksize=64), **bar))
    finally:
        _POOL_FINGERPRINTS = None

# ---------------------------------------------------------------- step 3: groups

class UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i, j):
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            # The smaller index becomes the root, so results do not depend on call order.
            if rj < ri:
                ri, rj = rj, ri
            self.parent[rj] = ri

    def components(self):
        """Lists of member indices, each sorted, ordered by their first member."""
        members = {}
        for i in range(len(self.parent)):
            members.setdefault(self.find(i), []).append(i)
        return sorted(members.values(), key=lambda m: m[0])



def group_size_limit(n_images):
    """Largest duplicate group that is not suspicious: 1 % of the images, at least 20."""
    return max(20, n_images // 100)


@dataclass
class DuplicateReport:
    """Duplicate clusters over a list of items (indices refer to the caller's list)."""

    exact_clusters: list = field(default_factory=list)  # clusters of identical bytes (size >= 2)
    clusters: list = field(default_factory=list)  # every duplicate cluster, joined by pairs (size >= 2)
    candidates: list = field(default_factory=list)  # Candidate: every pair proposed, with its verdict
    union_find: UnionFind = None
    decisions_file: dict = None  # path and SHA-256 of the decisions file applied, if any

    @property
    def near_pairs(self):
        """Pairs joined as duplicates although their bytes differ."""
        return [c for c in self.candidates if c.verdict in ("exact_pixels", "duplicate")]


def decoded_pixels_sha256(path):
    image = np.asarray(read_image(path))
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


def _same_pixels(fingerprints, pairs):
    """The pairs whose files decode to identical pixels (full decode, only for pairs whose
    thumbnails are almost equal)."""
    cache = {}

    def pixels(i):
        if i not in cache:
            cache[i] = decoded_pixels_sha256(fingerprints[i].path)
        return cache[i]

    close = [(i, j) for i, j in pairs if fingerprints[i].thumb.shape == fingerprints[j].thumb.shape and np.abs(
        fingerprints[i].thumb.astype(np.int16) - fingerprints[j].thumb).mean() <= PIXEL_CHECK_MAX_DIFF]
    return {(i, j) for i, j in close if pixels(i) == pixels(j)}


def _exact_byte_clusters(fingerprints):
    by_digest = {}
    for i, f in enumerate(fingerprints):
        by_digest.setdefault(f.sha256, []).append(i)
    return sorted((m for m in by_digest.values() if len(m) > 1), key=lambda m: m[0])


def _identical_thumbnail_pairs(fingerprints, representatives):
    """Pairs of images with byte-identical thumbnails (each with its bucket's first image): a
    large set of identical pictures need not fit in anyone's nearest neighbours."""
    buckets = {}
    for i in representatives:
        buckets.setdefault(fingerprints[i].thumb.tobytes(), []).append(i)
    return [(m[0], j) for m in buckets.values() for j in m[1:]]


def _near_candidates(fingerprints, representatives, neighbours):
    """Candidate pairs among the representatives (one per distinct file content), by nearest
    neighbours plus identical thumbnails, in original indices."""
    descriptors = view_descriptors([fingerprints[i].views for i in representatives])
    found = {}
    for c in candidate_pairs(descriptors, neighbours):
        c.i, c.j = representatives[c.i], representatives[c.j]
        found[(c.i, c.j)] = c
    for i, j in _identical_thumbnail_pairs(fingerprints, representatives):
        found.setdefault((i, j), Candidate(i, j, 1.0, False))
    return [found[key] for key in sorted(found)]


def _verify_round(fingerprints, candidates, min_inliers, uf, workers, progress):
    jobs = [(c.i, c.j, c.mirrored, min_inliers) for c in candidates]
    for c, score in zip(candidates, verify_pairs(fingerprints, jobs, workers, progress)):
        c.inliers = score
        c.verdict = "duplicate" if score >= min_inliers else "different"
        if c.verdict == "duplicate":
            uf.union(c.i, c.j)


def _judge(fingerprints, candidates, min_inliers, uf, workers, progress):
    """Verdicts for the undecided candidates, joining verified pairs in `uf`. Round 1 verifies
    each image's most similar candidate; round 2 the rest, except pairs already joined by
    verified pairs (verdict `same_group`: checking them could not change any group)."""
    undecided = [c for c in candidates if not c.verdict]
    same_pixels = _same_pixels(fingerprints, [(c.i, c.j) for c in undecided])
    for c in undecided:
        if (c.i, c.j) in same_pixels:
            c.verdict = "exact_pixels"
            uf.union(c.i, c.j)
    undecided = sorted((c for c in undecided if not c.verdict), key=lambda c: (-c.similarity, c.i, c.j))
    first, seen = [], set()
    for c in undecided:
        if c.i not in seen or c.j not in seen:
            first.append(c)
        seen.update((c.i, c.j))
    _verify_round(fingerprints, first, min_inliers, uf, workers, progress)
    rest = []
    for c in undecided:
        if not c.verdict:
            if uf.find(c.i) == uf.find(c.j):
                c.verdict = "same_group"
            else:
                rest.append(c)
    _verify_round(fingerprints, rest, min_inliers, uf, workers, progress)


def _apply_decisions(candidates, decisions, exact_pairs, uf):
    """A person's verdicts (index pair -> "same" | "different") replace the detector's; a pair
    the detector did not propose is added. Decided pairs are not verified."""
    by_pair = {(c.i, c.j): c for c in candidates}
    for (i, j), decision in sorted((decisions or {}).items()):
        if (i, j) in exact_pairs:
            continue  # identical bytes are the same picture whatever a list says (the caller refuses "different")
        candidate = by_pair.get((i, j))
        if candidate is None:
            candidate = by_pair[(i, j)] = Candidate(i, j, float("nan"), False)
            candidates.append(candidate)
        candidate.verdict = "duplicate" if decision == "same" else "different"
        candidate.decided_by = "decisions file"
        if decision == "same":
            uf.union(i, j)
    candidates.sort(key=lambda c: (c.i, c.j))


def find_duplicates(fingerprints, near=True, neighbours=DEFAULT_NEIGHBOURS, min_inliers=DEFAULT_MIN_INLIERS,
                    decisions=None, workers=None, progress=False):
    """Duplicate clusters: identical bytes, plus (with `near`) pairs verified as the same picture
    (identical decoded pixels, or at least `min_inliers` geometrically consistent keypoint
    matches). Clusters are unions of those pairs only: two images are in one cluster when a
    chain of verified pairs joins them, never because both are merely similar to a third."""
    n = len(fingerprints)
    uf = UnionFind(n)
    exact = _exact_byte_clusters(fingerprints)
    for members in exact:
        for j in members[1:]:
            uf.union(members[0], j)
    exact_pairs = {(a, b) for m in exact for k, a in enumerate(m) for b in m[k + 1:]}
    candidates = []
    if near:
        representatives = [i for i in range(n) if uf.find(i) == i]
        candidates = _near_candidates(fingerprints, representatives, neighbours)
    _apply_decisions(candidates, decisions, exact_pairs, uf)
    _judge(fingerprints, candidates, min_inliers, uf, workers, progress)
    clusters = [c for c in uf.components() if len(c) > 1]
    return DuplicateReport(exact, clusters, candidates, uf)
