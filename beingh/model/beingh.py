"""The Being-H0.5 policy model: InternViT + connector + Qwen3 MoT (VLM + action expert) + flow-matching head.

Input is a `PackedBatch`. Text and image tokens form the "und" stream (VLM weights), each sample's state
token and action tokens form the "gen" stream (expert weights); one joint attention per layer under the
per-sample document mask. Parameter names match the released Being-H05 checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from beingh.batch import PackedBatch
from beingh.model.action_head import ActionEncoder, SimpleMLP
from beingh.model.attention import AttentionMask, TokenMeta, sample_ids_from_lens
from beingh.model.config import BeingHConfig
from beingh.model.flow import interpolate, masked_squared_error, sample_time, time_buckets
from beingh.model.mot import AttentionInputs, KVCache, MoTForCausalLM, StreamLayout
from beingh.model.mpg import MPGEnhancement
from beingh.model.rtc import fit_prefix, prefix_mask, sample_delays
from beingh.model.vision import InternVisionModel, InternVLConnector, image_tokens

HEAD_MODULES = (
    "proprio_encoder_robot",
    "action_encoder",
    "action_decoder",
    "action_to_vlm_proj",
    "vlm_to_action_proj",
)


@dataclass
class BeingHOutput:
    loss: torch.Tensor
    """The pack's action loss: mean squared velocity error over its valid action elements."""
    action_loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    """Detached scalars for logging (no host sync happens inside the model)."""
    action_loss_sum: torch.Tensor
    """Sum of the squared errors behind `loss` (for normalising over several packs and ranks)."""
    num_action_elements: torch.Tensor
    """Number of valid action elements behind `loss` (fp32 scalar)."""


@dataclass
class _Prefix:
    """Everything before the action tokens, embedded once per batch."""

    h_und: torch.Tensor  # (N_und, d_vlm) text then image tokens
    und_index: torch.Tensor  # (N_und,) their pack positions
    state: torch.Tensor  # (B, d_expert) state-token features
    meta: TokenMeta  # mask facts of every pack position


@dataclass
class FlowStart:
    """Where the Euler integration starts: noise, and the RTC-locked chunk steps with their values."""

    noise: torch.Tensor  # (B, T, U) fp32, or (passes, B, T, U): one per MPG pass
    locked: torch.Tensor  # (B, T, 1) bool
    locked_values: torch.Tensor  # (B, T, U) fp32


@dataclass
class CachedFlow:
    """One call's inputs to the cached flow loop: the embedded prefix, its K/V cache and the start.

    Besides the model's weights and what the pack's layout determines (mask, RoPE tables, row order),
    `tensors()` are all that the loop reads: a CUDA graph of the loop is replayed for a new call of the
    same layout after copying these into the captured ones (`beingh.inference.cuda_graph`)."""

    prefix: _Prefix
    cache: KVCache
    start: FlowStart

    def tensors(self) -> list[torch.Tensor]:
        kv = [t for layer in self.cache.layers for t in (layer.key, layer.value)]
        return [self.start.noise, self.start.locked, self.start.locked_values, self.prefix.state, *kv]


class BeingH(nn.Module):
    def __init__(self, config: BeingHConfig):
        super().__init__()
        self.config = config
        dv, da, u = config.llm.hidden_size, config.expert.hidden_size, config.unified_dim
        self.vit_model = InternVisionModel(config.vit, config.force_image_size, config.select_layer)
        self.connector = InternVLConnector(config.vit.hidden_size, dv, config.downsample_ratio)
        self.language_model = MoTForCausalLM(config.llm, config.expert)
        self.proprio_encoder_robot = SimpleMLP(u, da, da)
        self.action_encoder = ActionEncoder(u, da)
        self.action_decoder = SimpleMLP(da, da, u)
        if config.use_mpg:
            self.action_to_vlm_proj = nn.Linear(da, dv)
            self.vlm_to_action_proj = nn.Linear(dv, da)
            self.mpg = MPGEnhancement(dv, da, dv, config.mpg_num_projections)
        self.init_weights()
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    # ---- construction helpers --------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """HF-Qwen3 init for the decoder (N(0, 0.02), unit norms), Xavier for the action head (as the
        original's `_init_weights`), PyTorch defaults for the ViT, connector and MPG. Also materialises a
        model built on the meta device after `to_empty`."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for module in self.language_model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            elif hasattr(module, "weight") and module.weight.ndim == 1:
                module.weight.fill_(1.0)
        emb = self.vit_model.embeddings
        emb.class_embedding.normal_(0.0, 0.02)
        emb.position_embedding.normal_(0.0, 0.02)
        for layer in self.vit_model.encoder.layers:
            layer.ls1.fill_(self.config.vit.initializer_factor)
            layer.ls2.fill_(self.config.vit.initializer_factor)
        for name in HEAD_MODULES:
            for module in getattr(self, name, nn.Identity()).modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Non-reentrant activation checkpointing of every ViT layer and every decoder layer."""
        self.vit_model.encoder.gradient_checkpointing = enabled
        self.language_model.model.gradient_checkpointing = enabled

    def blocks(self) -> list[nn.Module]:
        """The repeated blocks: every ViT layer, then every decoder layer."""
        return [*self.vit_model.encoder.layers, *self.language_model.model.layers]

    def fsdp_units(self) -> list[nn.Module]:
        """Modules to `fully_shard` one by one (then the root): the blocks, and the `lm_head`, which the
        action loss never calls: as its own unit it is never all-gathered (in the root it would be, every
        step: 311 M parameters at the 2B shape)."""
        return [*self.blocks(), self.language_model.lm_head]

    def compile_for_inference(self, backend: str = "inductor") -> None:
        """torch.compile every ViT layer and every MoT decoder layer (each on its own, dynamic shapes).

        What runs compiled: the ViT, the prefix pass (und + state tokens) and every Euler step of the cached
        action steps (a gen-only pass: its und branches are skipped on shapes, its rows need no gathers).
        All decoder layers share their compiled graphs (nothing in a layer's code depends on its index).
        What stays eager: embeddings, the connector, the action encoder/decoder, MPG, the Euler update, and
        the per-call setup (RoPE tables, mask, layout and K/V cache, built once per `sample_actions` call).
        The step loop has static shapes within a call and no host syncs or value-dependent Python branches:
        `beingh.inference.cuda_graph` captures it as a CUDA graph. `backend="eager"` only traces (CPU checks).
        """
        for layer in self.blocks():
            layer.compile(dynamic=True, backend=backend)

    # ---- shared pieces of training and sampling -----------------------------------------------------
    def _check_batch(self, batch: PackedBatch) -> None:
        b, t = batch.action.shape[:2]
        if t != self.config.action_chunk_length:
            raise ValueError(
                f"batch chunk length {t} != config.action_chunk_length {self.config.action_chunk_length}"
            )
        if tuple(batch.action_indexes.shape) != (b, t) or tuple(batch.state_indexes.shape) != (b,):
            raise ValueError(
                f"batch has {b} samples but action_indexes {tuple(batch.action_indexes.shape)} / "
                f"state_indexes {tuple(batch.state_indexes.shape)}"
            )
        if sum(batch.sample_lens) != batch.num_tokens:
            raise ValueError(
                f"sum(sample_lens)={sum(batch.sample_lens)} != number of tokens {batch.num_tokens}"
            )

    def _embed_prefix(self, batch: PackedBatch) -> _Prefix:
        embed = self.language_model.model.embed_tokens
        text = embed(batch.input_ids[batch.text_indexes])
        parts, index = [text], [batch.text_indexes]
        if batch.pixel_values.shape[0] > 0:
            vision = image_tokens(
                self.vit_model, self.connector, batch.pixel_values, self.config.downsample_ratio
            )
            if vision.shape[0] != batch.image_token_indexes.shape[0]:
                raise ValueError(
                    f"{batch.pixel_values.shape[0]} images give {vision.shape[0]} tokens but the batch has "
                    f"{batch.image_token_indexes.shape[0]} image_token_indexes "
                    f"({self.config.tokens_per_image} per image expected)"
                )
            parts.append(vision.to(text.dtype))
            index.append(batch.image_token_indexes)
        state = self.proprio_encoder_robot(batch.state.to(self.proprio_encoder_robot.layer1.weight.dtype))
        device = batch.input_ids.device
        meta = TokenMeta(
            sample_ids_from_lens(batch.sample_lens, device),
            torch.arange(batch.num_tokens, device=device),
            batch.segment_ids,
        )
        return _Prefix(torch.cat(parts), torch.cat(index), state, meta)

    def _action_features(
        self,
        x_t: torch.Tensor,
        t_tok: torch.Tensor,
        state: torch.Tensor,
        clean_actions: torch.Tensor | None,
        one_gate: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Action-token inputs (B, T, d_expert); with MPG, the gated round trip through the VLM width.

        `clean_actions` (B, T, 200) is the gate's evidence (ground truth in training, the previous pass at
        inference); None means none yet: `fixed` gates with g = 0, `original` skips MPG altogether.
        `one_gate`: the original's training call (one gate for the whole pack).
        """
        cfg = self.config
        features = self.action_encoder(x_t, time_buckets(t_tok, cfg.num_timestep_buckets))
        if not cfg.mpg_active:
            return features, {}
        if not hasattr(self, "mpg"):
            raise ValueError(
                "config enables MPG (use_mpg, mpg_lambda > 0) but the model was built without MPG modules; "
                "build it with use_mpg=True or load a checkpoint that has mpg.* weights"
            )
        original = cfg.mpg_semantics == "original"
        if original and clean_actions is None:
            return features, {}
        clean_emb = None
        if clean_actions is not None:
            clean_bucket = 0 if original else cfg.num_timestep_buckets
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.mpg_use_stop_gradient):
                buckets = torch.full(clean_actions.shape[:2], clean_bucket, device=clean_actions.device)
                clean_emb = self.action_encoder(clean_actions, buckets)
        if original:  # the original's all-zero VLM rows at the state positions, not passed through P_u
            up = self.action_to_vlm_proj(features)
            obs = torch.cat([up.new_zeros(up.shape[0], 1, up.shape[-1]), up], dim=1)
        else:
            obs = self.action_to_vlm_proj(torch.cat([state[:, None].to(features.dtype), features], dim=1))
        enhanced, gate, distance = self.mpg(
            obs,
            clean_emb,
            cfg.mpg_lambda,
            cfg.mpg_gate_temperature,
            cfg.mpg_use_stop_gradient,
            seed=cfg.mpg_seed,
            semantics=cfg.mpg_semantics,
            one_gate=one_gate and original,
        )
        return self.vlm_to_action_proj(enhanced[:, 1:]), {
            "mpg_gate": gate.mean(),
            "mpg_distance": distance.mean(),
        }

    def _decode(
        self,
        batch: PackedBatch,
        meta: TokenMeta,
        h_und: torch.Tensor,
        und_index: torch.Tensor,
        h_gen: torch.Tensor,
        gen_index: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Runs the MoT decoder over the given tokens (the whole pack, or the prefix pass that fills
        `cache`); returns the final-normed gen-stream states."""
        llm = self.config.llm
        layout, attn_pos = StreamLayout.build(
            und_index, gen_index, batch.position_ids, llm.head_dim, llm.rope_theta
        )
        q_meta = meta.select(attn_pos)
        if cache is not None:
            cache.meta = q_meta
        mask = AttentionMask(q_meta, q_meta, self.config.attn_backend)
        dtype = h_und.dtype
        _, out_gen = self.language_model.model(h_und, h_gen.to(dtype), AttentionInputs(layout, mask, cache))
        return out_gen

    # ---- training ------------------------------------------------------------------------------------
    def forward(
        self,
        batch: PackedBatch,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        rtc_delay: torch.Tensor | None = None,
    ) -> BeingHOutput:
        """Flow-matching loss on the action chunks of a pack.

        noise (B, T, 200), time (B,) and rtc_delay (B,) int are drawn inside only when not given. RTC
        delays are drawn only in training mode with `use_training_time_rtc`; otherwise they are 0.
        """
        self._check_batch(batch)
        cfg = self.config
        b, t = batch.action.shape[:2]
        device = batch.action.device
        actions = batch.action.float()
        noise = (
            torch.randn_like(actions) if noise is None else _checked("noise", noise, actions.shape).float()
        )
        time = sample_time(cfg, b, device) if time is None else _checked("time", time, (b,)).float()
        if rtc_delay is not None:
            rtc_delay = _checked("rtc_delay", rtc_delay, (b,)).long()
        else:
            max_delay = cfg.simulated_delay if cfg.use_training_time_rtc and self.training else 0
            rtc_delay = sample_delays(b, max_delay, cfg.rtc_delay_exp_weight, t, device)
        committed = prefix_mask(rtc_delay, t)
        t_tok = torch.where(committed, torch.ones_like(actions[..., 0]), time[:, None].expand(b, t))
        x_t, target = interpolate(actions, noise, t_tok)

        prefix = self._embed_prefix(batch)
        features, metrics = self._action_features(x_t, t_tok, prefix.state, clean_actions=actions, one_gate=True)
        h_gen = torch.cat([prefix.state, features.reshape(b * t, -1).to(prefix.state.dtype)])
        gen_index = torch.cat([batch.state_indexes, batch.action_indexes.reshape(-1)])
        out_gen = self._decode(batch, prefix.meta, prefix.h_und, prefix.und_index, h_gen, gen_index)
        velocity = self.action_decoder(out_gen[b:]).view(b, t, -1)

        loss_sum, count = masked_squared_error(velocity, target, batch.action_mask & ~committed[..., None])
        action_loss = loss_sum / (count + 1e-8)
        metrics = {
            "action_loss": action_loss.detach(),
            "rtc_delay_mean": rtc_delay.float().mean(),
            "flow_time_mean": time.mean(),
            **metrics,
        }
        return BeingHOutput(action_loss, action_loss, metrics, loss_sum, count)

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        batch: PackedBatch,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        prefix_actions: torch.Tensor | None = None,
        prefix_len: torch.Tensor | int = 0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Euler-integrate the flow from noise (t=0) to actions (t=1) for every sample of the pack.

        Returns (B, T, 200) fp32 normalized unified actions. With `prefix_actions` (B, T', 200) and
        `prefix_len` (int or (B,)), the first `prefix_len` steps are locked to the previous chunk (RTC
        prefix overwrite: encoded at t=1, returned exactly). With `use_cache`, text/images/state are run
        once into a per-layer K/V cache and each Euler step runs only the action tokens (expert weights);
        this works for any number of packed samples. With MPG, `1 + mpg_refinement_iters` passes are run,
        each gated by the previous pass's result (`fixed`: all from the same noise, the first with g = 0;
        `original`: the first without MPG, the others from fresh noise). `noise` is (B, T, 200), or
        (passes, B, T, 200) to fix every pass's starting noise.
        """
        steps = num_steps or self.config.num_inference_timesteps
        if use_cache:
            flow = self.prepare_cached_flow(batch, noise, prefix_actions, prefix_len)
            return self.integrate(self.cached_velocity(batch, flow), flow.start, steps)
        start = self._flow_start(batch, noise, prefix_actions, prefix_len)
        return self.integrate(self._full_velocity(batch, self._embed_prefix(batch)), start, steps)

    def _flow_start(
        self,
        batch: PackedBatch,
        noise: torch.Tensor | None,
        prefix_actions: torch.Tensor | None,
        prefix_len: torch.Tensor | int,
    ) -> FlowStart:
        self._check_batch(batch)
        cfg = self.config
        b, t = batch.action.shape[:2]
        device = batch.action.device
        shape = (b, t, cfg.unified_dim)
        passes = 1 + cfg.mpg_refinement_iters if cfg.mpg_active else 1
        if noise is None:
            noise = torch.randn(shape, device=device)
        elif noise.ndim == 4:
            noise = _checked("noise", noise, (passes, *shape)).float()
        else:
            noise = _checked("noise", noise, shape).float()
        locked = torch.zeros((b, t, 1), dtype=torch.bool, device=device)
        locked_values = torch.zeros(shape, device=device)
        if prefix_actions is not None:
            _checked("prefix_actions", prefix_actions, (b, None, cfg.unified_dim))
            locked_values = fit_prefix(prefix_actions.to(device).float(), t)
            delays = torch.as_tensor(prefix_len, device=device).long().expand(b)
            locked = prefix_mask(delays, t)[..., None]
        elif not (isinstance(prefix_len, int) and prefix_len == 0):
            raise ValueError("prefix_len is set but prefix_actions is None")
        return FlowStart(noise, locked, locked_values)

    @torch.no_grad()
    def prepare_cached_flow(
        self,
        batch: PackedBatch,
        noise: torch.Tensor | None = None,
        prefix_actions: torch.Tensor | None = None,
        prefix_len: torch.Tensor | int = 0,
    ) -> CachedFlow:
        """The per-call part of cached sampling: check the pack, draw the start, embed text/images/state and
        run them once through the decoder into a per-layer K/V cache (the prefix pass)."""
        start = self._flow_start(batch, noise, prefix_actions, prefix_len)
        prefix = self._embed_prefix(batch)
        cache = KVCache(self.config.llm.num_hidden_layers)
        self._decode(
            batch, prefix.meta, prefix.h_und, prefix.und_index, prefix.state, batch.state_indexes, cache
        )
        cache.freeze()
        return CachedFlow(prefix, cache, start)

    def integrate(self, velocity, start: FlowStart, steps: int) -> torch.Tensor:
        """The Euler loop (all MPG passes): static shapes, no host syncs, so it can run as a CUDA graph."""
        locked, locked_values = start.locked, start.locked_values
        # Per-token flow time of every Euler step, built before the loop (locked steps stay at t=1).
        step_times = [torch.where(locked[..., 0], 1.0, k / steps) for k in range(steps)]
        clean = None
        for p in range(1 + self.config.mpg_refinement_iters if self.config.mpg_active else 1):
            x = torch.where(locked, locked_values, self._pass_noise(start.noise, p))
            for t_tok in step_times:
                x = torch.where(locked, locked_values, x + velocity(x, t_tok, clean).float() / steps)
            clean = x
        return x

    def _pass_noise(self, noise: torch.Tensor, p: int) -> torch.Tensor:
        """Starting noise of sampling pass `p`: per-pass noise when given (P, B, T, 200); else the given
        noise for every pass (`fixed`) or, as the original, fresh noise for each refinement pass (`original`)."""
        if noise.ndim == 4:
            return noise[p]
        if p > 0 and self.config.mpg_semantics == "original":
            return torch.randn_like(noise)
        return noise

    def _full_velocity(self, batch: PackedBatch, prefix: _Prefix):
        """Velocity function that reruns the whole pack (reference path for the cache)."""
        b, t = batch.action.shape[:2]
        gen_index = torch.cat([batch.state_indexes, batch.action_indexes.reshape(-1)])

        def velocity(x: torch.Tensor, t_tok: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
            features, _ = self._action_features(x, t_tok, prefix.state, clean)
            h_gen = torch.cat([prefix.state, features.reshape(b * t, -1).to(prefix.state.dtype)])
            out_gen = self._decode(batch, prefix.meta, prefix.h_und, prefix.und_index, h_gen, gen_index)
            return self.action_decoder(out_gen[b:]).view(b, t, -1)

        return velocity

    def cached_velocity(self, batch: PackedBatch, flow: CachedFlow):
        """Velocity function over the K/V cache of everything but the action tokens (exact under the mask).

        All that the Euler steps share is built here, once per call, from the pack's layout: the action
        rows' order, RoPE tables and the mask against cache + actions. A step embeds the actions and runs a
        gen-only pass with fixed shapes and no host sync (the only sync, the segment check below, is here).
        """
        b, t = batch.action.shape[:2]
        llm = self.config.llm
        prefix = flow.prefix
        action_index = batch.action_indexes.reshape(-1)
        action_segments = batch.segment_ids[action_index]
        other = torch.ones(batch.num_tokens, dtype=torch.bool, device=action_index.device)
        other[action_index] = False
        shared = torch.isin(batch.segment_ids[other], action_segments[action_segments >= 0])
        if bool(shared.any()):
            raise ValueError("an action segment also holds non-action tokens; sample with use_cache=False")
        # The steps keep the action rows in pack (attention) order: one gather in, one out, none per layer.
        to_attn = torch.argsort(action_index)
        to_stream = torch.argsort(to_attn)
        attn_pos = action_index[to_attn]
        layout = StreamLayout.gen_in_attention_order(
            batch.position_ids[attn_pos], llm.head_dim, llm.rope_theta
        )
        q_meta = prefix.meta.select(attn_pos)
        mask = AttentionMask(q_meta, TokenMeta.cat([flow.cache.meta, q_meta]), self.config.attn_backend)
        inputs = AttentionInputs(layout, mask, flow.cache)
        no_und = prefix.h_und[:0]

        def velocity(x: torch.Tensor, t_tok: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
            features, _ = self._action_features(x, t_tok, prefix.state, clean)
            h_gen = features.reshape(b * t, -1)[to_attn].to(no_und.dtype)
            _, out_gen = self.language_model.model(no_und, h_gen, inputs)
            return self.action_decoder(out_gen[to_stream]).view(b, t, -1)

        return velocity

    # ---- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write `config.json` (release layout) and `model.safetensors` (release parameter names)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / "config.json")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, map_location: str | torch.device = "cpu") -> BeingH:
        """Load our checkpoints and the original's release folders (strict: any key mismatch raises)."""
        from beingh.model.loading import load_checkpoint

        ckpt = Path(ckpt_dir)
        config = BeingHConfig.load(ckpt / "config.json")
        with torch.device("meta"):
            model = cls(config)
        load_checkpoint(model, ckpt)
        return model.to(map_location)


def _checked(name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> torch.Tensor:
    """`tensor` if its shape matches (None = any size), else a ValueError naming the argument."""
    ok = tensor.ndim == len(shape) and all(e is None or e == d for e, d in zip(shape, tensor.shape))
    if not ok:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor
