"""The ``/docs`` page: Swagger UI when the browser can reach its CDN, and a summary served from here when it cannot.

FastAPI's Swagger UI page loads its JavaScript and CSS from cdn.jsdelivr.net and is blank offline. No installed
package ships the Swagger UI assets (``swagger-ui-bundle`` on PyPI would be one more dependency for a docs page), so
the page carries its own plain-HTML summary of every route, rendered here from the OpenAPI schema, and says where
the interactive UI comes from. When the CDN script loads, Swagger UI replaces the summary.
"""

from __future__ import annotations

import html
import json
from typing import Any

SWAGGER_JS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
SWAGGER_CSS = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
EXAMPLE = '{"texts": ["Stocks fell sharply on Monday", "The team won 3-1"], "class_mass": false}'


def _routes(openapi: dict[str, Any]) -> str:
    rows = []
    for path, operations in openapi.get("paths", {}).items():
        for method, op in operations.items():
            summary = op.get("description") or op.get("summary") or ""
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())} {html.escape(path)}</code></td>"
                f"<td>{html.escape(summary.strip().splitlines()[0] if summary.strip() else '')}</td></tr>"
            )
    return "\n".join(rows)


def docs_page(openapi: dict[str, Any], openapi_url: str) -> str:
    title = html.escape(str(openapi.get("info", {}).get("title", "API")))
    url = json.dumps(openapi_url)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{title} - API docs</title><link rel="stylesheet" href="{SWAGGER_CSS}"></head>
<body>
<div id="offline" style="font-family: sans-serif; max-width: 60em; margin: 2em auto">
<h1>{title} API</h1>
<p><b>This is the offline summary.</b> The interactive Swagger UI loads from <code>cdn.jsdelivr.net</code>, which
this browser could not reach; everything below is served by this server. The full machine-readable schema is at
<a href={html.escape(url)}><code>{html.escape(openapi_url)}</code></a>.</p>
<table border="1" cellpadding="4" style="border-collapse: collapse">
<tr><th>route</th><th>what it does</th></tr>
{_routes(openapi)}
</table>
<p>Example:</p>
<pre>curl -s http://HOST:PORT/v1/classify -H 'Content-Type: application/json' -d '{html.escape(EXAMPLE)}'</pre>
</div>
<div id="swagger-ui"></div>
<script src="{SWAGGER_JS}"></script>
<script>
if (window.SwaggerUIBundle) {{
  document.getElementById("offline").remove();
  SwaggerUIBundle({{url: {url}, dom_id: "#swagger-ui", deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset], layout: "BaseLayout"}});
}}
</script>
</body></html>
"""
