"""Model side: vision, connector, MoT decoder, action head, MPG, RTC. Never imports `beingh.data` or `beingh.train`."""
