"""A spider that makes no request: it sleeps, so a test has a crawl that keeps running."""

import asyncio

import scrapy


class SleeperSpider(scrapy.Spider):
    name = "sleeper"

    def __init__(self, seconds="600", **kwargs):
        super().__init__(**kwargs)
        self.seconds = float(seconds)

    async def start(self):
        await asyncio.sleep(self.seconds)
        yield {"slept": self.seconds}
