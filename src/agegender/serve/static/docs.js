"use strict";
// Starts Swagger UI on /docs from the package's own copy (no CDN, no inline script).
window.ui = SwaggerUIBundle({ url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true });
