// PayFlow's API reference: Swagger UI over the daemon's own /openapi.json. "Authorize" takes an
// API key (the Bearer secret), which Swagger UI keeps in this page only.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  tryItOutEnabled: false,
  validatorUrl: null,
});
