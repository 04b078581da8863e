"""Model side: vision, connector, MoT decoder, action head, MPG, RTC. Never imports `beingh.data` or `beingh.train`.

Entry points: `beingh.model.beingh.BeingH` (forward -> flow-matching loss, `sample_actions`,
`save_pretrained`/`from_pretrained`), `beingh.model.config.BeingHConfig`, `beingh.model.loading`
(`build_model`, `init_expert`, `load_checkpoint`), `beingh.model.tiny` (tiny configs, weight folders and
synthetic packs for tests and demos) and `beingh.model.flops` (training FLOPs of a pack, for MFU).
"""
