"""The page's files as a browser fetches them (no browser needed): every file it loads
is served, with a type a module script accepts, and is revalidated after a deploy."""

from __future__ import annotations

import re

import aiohttp
from yarl import URL

from rlm_service.server import Server


async def test_the_page_and_everything_it_loads_are_served(server: Server) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as response:
            assert response.status == 200 and response.content_type == "text/html"
            assert response.headers["Cache-Control"] == "no-cache"
            html = await response.text()
        scripts = re.findall(r'<script[^>]* src="([^"]+)"', html)
        styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
        assert "/static/app.js" in scripts and styles == ["/static/style.css"]
        # app.js imports the other modules relative to itself.
        async with http.get(f"{base}/static/app.js") as response:
            imports = re.findall(r'from "\./([^"]+)"', await response.text())
        async with http.get(f"{base}/static/view.js") as response:
            imports += re.findall(r'from "\./([^"]+)"', await response.text())
        assert {"events.js", "view.js"} <= set(imports)
        for path in {*scripts, *styles, *(f"/static/{name}" for name in imports)}:
            async with http.get(base + path) as response:
                assert response.status == 200, path
                assert response.headers["Cache-Control"] == "no-cache", path
                expected = "text/css" if path.endswith(".css") else "text/javascript"
                assert response.content_type in (expected, "application/javascript"), path
        # Nothing outside static/ (app.py sits next to it), however the path is spelled.
        for escape in ("/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fapp.py"):
            async with http.get(URL(base + escape, encoded=True)) as response:
                assert response.status in (403, 404), escape
                assert "servicer" not in await response.text(), escape
        # The API is not the page: its caching is left to the client.
        async with http.get(f"{base}/healthz") as response:
            assert "Cache-Control" not in response.headers
