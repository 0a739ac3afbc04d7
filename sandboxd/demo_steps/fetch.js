// Step 1 of the demo integration: fetch the order export from the partner.
// With configVars.exportUrl it downloads it (HTTPS through the daemon's egress proxy, which lets
// the step reach only the hosts its tenant's allowlist names); without it, the export was pushed
// to the integration and arrives in the execution's input. Either way the step checks it and
// describes it.

// FNV-1a (32 bit): a cheap fingerprint to spot re-sent exports, not a security checksum.
function fingerprint(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash.toString(16).padStart(8, "0");
}

async function download(url) {
  const response = await fetch(url, { headers: { Accept: "application/xml" } });
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${response.statusText}`);
  console.log(`downloaded ${url} (${response.headers.get("content-type")})`);
  return response.text();
}

module.exports = async (context) => {
  const url = context.configVars.exportUrl;
  const document = url ? await download(url) : context.input && context.input.document;
  if (typeof document !== "string" || !document.trimStart().startsWith("<")) {
    throw new Error("the order export must be an XML document");
  }
  const bytes = Buffer.byteLength(document, "utf8");
  const root = /<([A-Za-z_][\w.-]*)[\s>]/.exec(document.replace(/<\?[\s\S]*?\?>|<!--[\s\S]*?-->/g, ""));
  console.log(`received ${bytes} bytes of XML (root <${root ? root[1] : "?"}>)`);
  return {
    contentType: "application/xml",
    bytes,
    fingerprint: fingerprint(document),
    rootElement: root ? root[1] : null,
    receivedAt: new Date().toISOString(),
    xml: document,
  };
};
