# Build stage: dev dependencies, TypeScript compile.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Run stage: production dependencies only, compiled JavaScript, non-root user.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY migrations ./migrations
COPY sql ./sql
COPY openapi.yaml ./
# The default start (no DATABASE_URL) runs an embedded PostgreSQL in ./data and writes the
# generated API key there: the non-root user must own it, and a volume keeps it across containers.
RUN mkdir -p /app/data && chown node:node /app/data
VOLUME /app/data
USER node
EXPOSE 4800
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.POSITION_MANAGER_PORT||4800)+'/health').then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))"
CMD ["node", "dist/src/main.js"]
