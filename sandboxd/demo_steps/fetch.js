// Step 1 of the demo integration: "fetch" the order export.
// A real integration would download it (Dropbox, SFTP, ...); the demo has no network, so the
// document arrives in the execution's input and this step checks it and describes it.

// FNV-1a (32 bit): a cheap fingerprint to spot re-sent exports, not a security checksum.
function fingerprint(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash.toString(16).padStart(8, "0");
}

module.exports = async (context) => {
  const document = context.input && context.input.document;
  if (typeof document !== "string" || !document.trimStart().startsWith("<")) {
    throw new Error("input.document must be the XML order export, as a string");
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
