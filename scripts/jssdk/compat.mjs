// Sends the compatibility check's requests (TestSDKCompatTable, activator
// package) through the official JS SDK: reads the cases as JSON on stdin,
// writes one result per case as JSON on stdout.
import OpenAI from 'openai';

const client = new OpenAI({ apiKey: process.env.INFER_KEY, baseURL: process.env.INFER_URL, maxRetries: 0 });
let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const c of JSON.parse(input)) {
  const base = {
    chat: { model: 'stories', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 3 },
    completions: { model: 'stories', prompt: 'Once upon a time', max_tokens: 3 },
    embeddings: { model: 'stories', input: 'Once upon a time' },
  }[c.endpoint];
  const params = { ...base, ...c.fields };
  try {
    if (c.endpoint === 'chat') await client.chat.completions.create(params);
    else if (c.endpoint === 'embeddings') {
      // The SDK asks for base64 unless told otherwise and decodes it.
      const res = await client.embeddings.create(params);
      const want = params.dimensions ?? 64; // stories260K's embedding size
      // Asked for base64 by the caller, it hands the string over as is.
      const size = (e) => (typeof e === 'string' ? Buffer.from(e, 'base64').length / 4 : e.length);
      if (res.data.some((d) => size(d.embedding) !== want)) throw new Error(`embeddings of ${res.data.map((d) => size(d.embedding))} values, want ${want}`);
    } else await client.completions.create(params);
    results.push({ status: 200 });
  } catch (e) {
    if (!(e instanceof OpenAI.APIError)) throw e;
    results.push({ status: e.status, param: e.param ?? '', code: e.code ?? '', error: e.message });
  }
}
process.stdout.write(JSON.stringify(results));
