// Step 2 of the demo integration: parse the XML export into plain objects.
// The customer's own small XML parser (no npm packages): a tokenizer, a tree builder, and an
// xml2js-style conversion (attributes as "@name", repeated elements as arrays).

class XmlError extends Error {
  constructor(message, position) {
    super(`${message} (at offset ${position})`);
    this.name = "XmlError";
  }
}

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

function decodeEntities(text, position) {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[A-Za-z]+);/g, (whole, name) => {
    if (name.startsWith("#")) {
      const code = name[1] === "x" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      if (code > 0x10ffff) throw new XmlError(`invalid character reference ${whole}`, position);
      return String.fromCodePoint(code);
    }
    if (!Object.hasOwn(ENTITIES, name)) throw new XmlError(`unknown entity ${whole}`, position);
    return ENTITIES[name];
  });
}

const NAME = /[A-Za-z_][\w.:-]*/y;
const ATTRIBUTE = /\s+([A-Za-z_][\w.:-]*)\s*=\s*(?:"([^"<]*)"|'([^'<]*)')/y;
const TAG_END = /\s*(\/?)>/y;

function indexAfter(xml, terminator, from) {
  const index = xml.indexOf(terminator, from);
  if (index === -1) throw new XmlError(`missing "${terminator}"`, from);
  return index + terminator.length;
}

function match(pattern, xml, position) {
  pattern.lastIndex = position;
  return pattern.exec(xml);
}

function readStartTag(xml, position) {
  const name = match(NAME, xml, position + 1);
  if (!name) throw new XmlError("expected an element name after '<'", position);
  const attributes = {};
  let cursor = position + 1 + name[0].length;
  let attribute;
  while ((attribute = match(ATTRIBUTE, xml, cursor))) {
    attributes[attribute[1]] = decodeEntities(attribute[2] ?? attribute[3], cursor);
    cursor += attribute[0].length;
  }
  const end = match(TAG_END, xml, cursor);
  if (!end) throw new XmlError(`malformed start tag <${name[0]}>`, cursor);
  const token = { type: "open", name: name[0], attributes, selfClosing: end[1] === "/" };
  return [token, cursor + end[0].length];
}

// Yields {type: "open" | "close" | "text", ...}; skips declarations, comments and doctypes.
function* tokenize(xml) {
  let position = 0;
  while (position < xml.length) {
    const lt = xml.indexOf("<", position);
    const textEnd = lt === -1 ? xml.length : lt;
    if (textEnd > position) {
      yield { type: "text", text: decodeEntities(xml.slice(position, textEnd), position) };
    }
    if (lt === -1) return;
    if (xml.startsWith("<!--", lt)) {
      position = indexAfter(xml, "-->", lt + 4);
    } else if (xml.startsWith("<![CDATA[", lt)) {
      position = indexAfter(xml, "]]>", lt + 9);
      yield { type: "text", text: xml.slice(lt + 9, position - 3) };
    } else if (xml.startsWith("<?", lt)) {
      position = indexAfter(xml, "?>", lt + 2);
    } else if (xml.startsWith("<!", lt)) {
      position = indexAfter(xml, ">", lt + 2);
    } else if (xml.startsWith("</", lt)) {
      position = indexAfter(xml, ">", lt + 2);
      yield { type: "close", name: xml.slice(lt + 2, position - 1).trim(), position: lt };
    } else {
      let token;
      [token, position] = readStartTag(xml, lt);
      yield token;
    }
  }
}

function buildTree(xml) {
  const document = { name: "#document", attributes: {}, children: [] };
  const open = [document];
  for (const token of tokenize(xml)) {
    const parent = open[open.length - 1];
    if (token.type === "text") {
      if (token.text.trim() !== "") parent.children.push(token.text);
    } else if (token.type === "open") {
      const element = { name: token.name, attributes: token.attributes, children: [] };
      parent.children.push(element);
      if (!token.selfClosing) open.push(element);
    } else if (token.name !== parent.name) {
      throw new XmlError(`</${token.name}> does not close <${parent.name}>`, token.position);
    } else {
      open.pop();
    }
  }
  if (open.length > 1) throw new XmlError(`<${open[open.length - 1].name}> is never closed`, xml.length);
  const roots = document.children.filter((child) => typeof child !== "string");
  if (roots.length !== 1) throw new XmlError(`expected one root element, found ${roots.length}`, 0);
  return roots[0];
}

const localName = (name) => name.slice(name.indexOf(":") + 1);

// xml2js style: text-only elements become strings; everything else an object.
function toPlain(element) {
  const elements = element.children.filter((child) => typeof child !== "string");
  const text = element.children.filter((child) => typeof child === "string").join("").trim();
  const attributes = Object.entries(element.attributes).filter(([name]) => !name.startsWith("xmlns"));
  if (elements.length === 0 && attributes.length === 0) return text;
  const plain = Object.create(null);
  for (const [name, value] of attributes) plain[`@${localName(name)}`] = value;
  for (const child of elements) {
    const key = localName(child.name);
    const value = toPlain(child);
    if (!(key in plain)) plain[key] = value;
    else if (Array.isArray(plain[key])) plain[key].push(value);
    else plain[key] = [plain[key], value];
  }
  if (text !== "") plain["#text"] = text;
  return plain;
}

const asArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);

module.exports = async (context) => {
  const { xml, fingerprint } = context.steps.fetch;
  const started = Date.now();
  const root = buildTree(xml);
  const document = toPlain(root);
  const orders = asArray(document.order);
  console.log(`parsed ${orders.length} <order> elements of <${root.name}> in ${Date.now() - started} ms`);
  const declared = Number(document["@count"]);
  if (declared !== orders.length) {
    context.logger.warn(`export ${fingerprint} declares ${declared} orders but holds ${orders.length}`);
  }
  return { generatedAt: document["@generated"] ?? null, orders };
};
