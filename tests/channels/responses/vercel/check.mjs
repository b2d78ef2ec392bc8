// The Vercel AI SDK's OpenAI Responses provider against a running agenthost.
// Usage: node check.mjs BASE_URL  (BASE_URL ends in /responses/v1)
// Prints one JSON object: what each scenario saw, or the error it ended with.
import { generateText, streamText, tool, stepCountIs } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { z } from "zod";

const [baseURL] = process.argv.slice(2);
const model = createOpenAI({ baseURL, apiKey: "key-vercel" }).responses("demo");

async function plain() {
  // The agent answers with its own add() tool: nothing here is the client's to run.
  const result = await generateText({ model, prompt: "what is 2 + 3" });
  return {
    text: result.text,
    finishReason: result.finishReason,
    clientToolCalls: result.toolCalls.filter((call) => !call.providerExecuted).length,
  };
}

async function streamed() {
  const result = streamText({ model, prompt: "what is 4 * 5" });
  const pieces = [];
  for await (const piece of result.textStream) pieces.push(piece);
  return { text: pieces.join(""), pieces: pieces.length, finishReason: await result.finishReason };
}

async function multiTurn() {
  const first = await generateText({ model, prompt: "my name is Ada" });
  const byHistory = await generateText({
    model,
    messages: [
      { role: "user", content: "my name is Ada" },
      ...first.response.messages,
      { role: "user", content: "what did I say first?" },
    ],
  });
  const byId = await generateText({
    model,
    prompt: "what did I say first?",
    providerOptions: { openai: { previousResponseId: first.providerMetadata.openai.responseId } },
  });
  return [byHistory.text, byId.text];
}

async function clientTool() {
  const calls = [];
  const getWeather = tool({
    description: "The weather in a city.",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      calls.push(city);
      return `sunny in ${city}`;
    },
  });
  const result = await generateText({
    model,
    prompt: 'call get_weather {"city": "Paris"}',
    tools: { get_weather: getWeather },
    stopWhen: stepCountIs(3),
  });
  return { text: result.text, steps: result.steps.length, calls };
}

const seen = {};
for (const [name, scenario] of Object.entries({ plain, streamed, multiTurn, clientTool })) {
  try {
    seen[name] = await scenario();
  } catch (error) {
    seen[name] = { error: error?.name ?? "Error", message: String(error?.message ?? error).slice(0, 300) };
  }
}
console.log(JSON.stringify(seen));
