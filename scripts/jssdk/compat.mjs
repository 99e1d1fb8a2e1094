// Sends the compatibility check's requests (TestSDKCompatTable, activator
// package) through the official JS SDK: reads the cases as JSON on stdin,
// writes one result per case as JSON on stdout.
import OpenAI from 'openai';

const client = new OpenAI({ apiKey: process.env.INFER_KEY, baseURL: process.env.INFER_URL, maxRetries: 0 });
let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const c of JSON.parse(input)) {
  const base = c.endpoint === 'chat'
    ? { model: 'stories', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 3 }
    : { model: 'stories', prompt: 'Once upon a time', max_tokens: 3 };
  const params = { ...base, ...c.fields };
  try {
    if (c.endpoint === 'chat') await client.chat.completions.create(params);
    else await client.completions.create(params);
    results.push({ status: 200 });
  } catch (e) {
    if (!(e instanceof OpenAI.APIError)) throw e;
    results.push({ status: e.status, param: e.param ?? '', code: e.code ?? '', error: e.message });
  }
}
process.stdout.write(JSON.stringify(results));
